// The built-in demo adapters (core/lora/demo_adapters.h).
#include "core/lora/demo_adapters.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

// The demo adapters load like any PEFT adapter and change the model's output.
TEST(DemoAdaptersTest, WrittenAdaptersLoadAndChangeLogits) {
  const std::string model_dir = testing::MakeTempDir();
  const std::string adapters_dir = testing::MakeTempDir();
  ASSERT_OK(WriteDemoModel(model_dir, ModelMakerOptions{ModelPreset::kTiny, 0, true}));
  ASSERT_OK(WriteDemoAdapters(model_dir, adapters_dir));
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(model_dir, ModelOptions()));
  LoraModel lora(model.get());
  const std::vector<int32_t> ids = {1, 40, 41, 42, 43};
  ASSERT_OK_AND_ASSIGN(at::Tensor base, lora.Score(ids, nullptr));
  for (const std::string& name : DemoAdapterNames()) {
    ASSERT_OK_AND_ASSIGN(auto a, LoraAdapter::Load(name, adapters_dir + "/" + name, *model,
                                                   lora.BaseWeightFn(), AdapterLoadOptions()));
    ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora.Score(ids, a));
    EXPECT_GT((logits - base).abs().max().item<double>(), 0.01) << name;
  }
  EXPECT_EQ(WriteDemoAdapters(model_dir, adapters_dir).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace loraserve::core
