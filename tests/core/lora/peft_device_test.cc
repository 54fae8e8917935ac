// The PEFT fixtures on the device and dtype under test: $LORASERVE_TEST_DEVICE (default cpu;
// cuda[:N] on a GPU machine, skipped when none is visible) in float32 (PEFT's recommended
// tolerance, as on the CPU) and bfloat16 (the tolerance below). For every single-adapter case:
// logits unmerged, merged, after unmerge (base), and a mixed base + adapter batch. The device
// check (bench/device_check.sh) runs it on CUDA; CI runs it on the CPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/peft_case.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::AllcloseExcess;
using ::loraserve::testing::LoadPeftCase;
using ::loraserve::testing::PeftDir;

const std::vector<std::string> kCases = {"qv_r4", "qv_r4_b", "all_linear_r8_rslora", "patterns", "regex_target",
                                         "dora_qv", "embed_lora", "modules_to_save_head", "lora_bias"};

// bf16 keeps 8 significant bits: every matmul input is rounded by up to 2^-9 relative and the
// error compounds through the layers. The bf16 measure is max |got − PEFT fp32| ÷ max |PEFT fp32|
// per prompt (logits here reach about 20). Measured on the CPU (LibTorch 1.13): 1.4% (embed_lora)
// to 4.6% (qv_r4, patterns) — the base alone about 1.5%; held to 6%, which a wrong adapter term
// (tens of percent) does not pass. all_linear_r8_rslora is left out in bf16: its fixture notes that
// its deltas are as large as the base weights and activations grow several-fold (PEFT's own fp32
// computations disagree by a few 1e-4 there); in bf16 it differs by 52% of the logit range, which
// says nothing about the adapter path.
constexpr double kBf16MaxRelative = 0.06;
const char* const kBf16IllConditioned = "all_linear_r8_rslora";

double Excess(const at::Tensor& got, const at::Tensor& want, at::ScalarType dtype) {
  if (dtype == at::kFloat) return AllcloseExcess(got, want);
  return (got.to(at::kCPU, at::kFloat) - want).abs().max().item<double>() / want.abs().max().item<double>();
}

class PeftDeviceTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    const char* env = std::getenv("LORASERVE_TEST_DEVICE");
    device_ = at::Device(env != nullptr && *env != '\0' ? env : "cpu");
    if (device_.is_cuda() && !at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible for " << env;
    ModelOptions mo;
    mo.device = device_;
    mo.dtype = GetParam();
    ASSERT_OK_AND_ASSIGN(model_, Model::Load(testing::SharedPath("fixtures/models/stories260K"), mo));
    lora_ = std::make_unique<LoraModel>(model_.get());
  }
  double Atol(double fp32_atol) const { return GetParam() == at::kFloat ? fp32_atol : kBf16MaxRelative; }

  at::Device device_ = at::kCPU;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
};

TEST_P(PeftDeviceTest, UnmergedMergedUnmergedAndMixedMatchPeft) {
  const at::ScalarType dtype = GetParam();
  double worst = 0;
  for (const std::string& name : kCases) {
    SCOPED_TRACE(name);
    if (dtype != at::kFloat && name == kBf16IllConditioned) {
      std::printf("peft_device_test: %s left out in %s (ill-conditioned, see above)\n", name.c_str(), c10::toString(dtype));
      continue;
    }
    const auto c = LoadPeftCase(name);
    ASSERT_OK_AND_ASSIGN(auto a, LoraAdapter::Load(name, PeftDir(name) + "/adapter", *model_,
                                                   lora_->BaseWeightFn(), AdapterLoadOptions()));
    const double atol = Atol(c.atol);
    auto check = [&](const std::vector<int32_t>& ids, const std::shared_ptr<const LoraAdapter>& adapter,
                     const std::string& key, const char* what) {
      auto got = lora_->Score(ids, adapter);
      ASSERT_OK(got.status());
      EXPECT_EQ(got->device(), device_);
      const double e = Excess(*got, c.expected.at(key), dtype);
      worst = std::max(worst, e);
      EXPECT_LE(e, atol) << what << " " << key;
    };
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      const std::string p = std::to_string(i);
      check(c.prompts[i], a, "logits.adapter.p" + p, "unmerged");
    }
    ASSERT_OK(lora_->Merge(a));
    for (size_t i = 0; i < c.prompts.size(); ++i) check(c.prompts[i], a, "logits.adapter.p" + std::to_string(i), "merged");
    ASSERT_OK(lora_->Unmerge(name));
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      if (c.expected.count("logits.base.p" + std::to_string(i))) {
        check(c.prompts[i], nullptr, "logits.base.p" + std::to_string(i), "after unmerge");
      }
    }
    // One batch: prompt 0 with the adapter, prompt 1 (or 0 again) on the base.
    const size_t other = c.prompts.size() > 1 ? 1 : 0;
    if (c.expected.count("logits.base.p" + std::to_string(other))) {
      KvCache cache(model_->config(), model_->options());
      ASSERT_OK(cache.AddSequence(0));
      ASSERT_OK(cache.AddSequence(1));
      std::vector<SequenceInput> batch = {{0, c.prompts[0]}, {1, c.prompts[other]}};
      ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Forward(batch, {a, nullptr}, &cache, LogitsMode::kAll));
      const int64_t n0 = static_cast<int64_t>(c.prompts[0].size());
      const double e0 = Excess(logits.narrow(0, 0, n0), c.expected.at("logits.adapter.p0"), dtype);
      const double e1 = Excess(logits.narrow(0, n0, logits.size(0) - n0),
                               c.expected.at("logits.base.p" + std::to_string(other)), dtype);
      worst = std::max({worst, e0, e1});
      EXPECT_LE(e0, atol) << "mixed batch, adapter row";
      EXPECT_LE(e1, atol) << "mixed batch, base row";
    }
  }
  // The device check's report quotes this line.
  if (dtype == at::kFloat) {
    std::printf("peft_device_test: %s float32 worst allclose excess %.3g (each case held to its recommended atol)\n",
                device_.str().c_str(), worst);
  } else {
    std::printf("peft_device_test: %s %s worst max|diff|/max|logit| %.4f (bound %.2f)\n", device_.str().c_str(),
                c10::toString(dtype), worst, kBf16MaxRelative);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PeftDeviceTest, ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

}  // namespace
}  // namespace loraserve::core
