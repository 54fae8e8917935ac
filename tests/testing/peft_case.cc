#include "tests/testing/peft_case.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/io/tensor_io.h"
#include "tests/testing/fixtures.h"

namespace loraserve::testing {

std::string PeftDir(const std::string& name) { return SharedPath("fixtures/peft/" + name); }

PeftCase LoadPeftCase(const std::string& name) {
  PeftCase c;
  c.name = name;
  auto json = core::ReadJsonFile(PeftDir(name) + "/expected.json");
  auto tensors = core::LoadSafetensors(PeftDir(name) + "/expected.safetensors");
  EXPECT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  if (!json.ok() || !tensors.ok()) return c;
  c.json = *json;
  c.expected = *tensors;
  for (const core::Json& p : c.json["prompts"]) c.prompts.push_back(p["ids"].get<std::vector<int32_t>>());
  c.atol = c.json.value("recommended_logits_atol", 1e-4);
  return c;
}

double AllcloseExcess(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs() - 1e-4 * b.abs()).max().item<double>();
}

}  // namespace loraserve::testing
