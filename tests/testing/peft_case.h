// One PEFT fixture case from shared/fixtures/peft: its expected.json, expected tensors and prompts.
#ifndef LORASERVE_TESTS_TESTING_PEFT_CASE_H_
#define LORASERVE_TESTS_TESTING_PEFT_CASE_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "core/io/json_file.h"

namespace loraserve::testing {

struct PeftCase {
  std::string name;  // e.g. "qv_r4", "multi/weighted/svd_w07_03"
  core::Json json;
  std::map<std::string, at::Tensor> expected;
  std::vector<std::vector<int32_t>> prompts;
  double atol = 1e-4;  // recommended_logits_atol
};

// shared/fixtures/peft/<name>
std::string PeftDir(const std::string& name);
// Loads a case; fails the current test (and returns an empty case) on error.
PeftCase LoadPeftCase(const std::string& name);
// max(|a − b| − rtol·|b|): a value ≤ atol means torch.allclose(a, b, atol, rtol=1e-4).
double AllcloseExcess(const at::Tensor& a, const at::Tensor& b);

}  // namespace loraserve::testing

#endif  // LORASERVE_TESTS_TESTING_PEFT_CASE_H_
