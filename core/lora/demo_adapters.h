// The built-in demo adapters: a few PEFT-format adapters with deterministic random weights for the
// built-in default model (core/model/model_maker.h), written through the project's own adapter
// writer, so the demo, the tests and the benchmarks need no download.
#ifndef LORASERVE_CORE_LORA_DEMO_ADAPTERS_H_
#define LORASERVE_CORE_LORA_DEMO_ADAPTERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace loraserve::core {

// Names of the demo adapters WriteDemoAdapters writes.
std::vector<std::string> DemoAdapterNames();

// Writes a few PEFT-format adapters for the model in `model_dir` (deterministic for `seed`)
// through the project's own adapter writer, one sub-directory each under `out_dir`:
//   demo-qv    LoRA r=8 on q_proj/v_proj
//   demo-mlp   rsLoRA r=16 on gate/up/down_proj
//   demo-dora  DoRA r=4 on q_proj/v_proj
//   demo-head  LoRA r=4 on q_proj plus its own lm_head (modules_to_save)
// FailedPrecondition if a target sub-directory is not empty; errors of Model::Load otherwise.
absl::Status WriteDemoAdapters(const std::string& model_dir, const std::string& out_dir,
                               uint64_t seed = 0);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_DEMO_ADAPTERS_H_
