// Combining adapters into a new one: PEFT's add_weighted_adapter, every combination_type.
// The formulas (shared/spec/lora-semantics.md §5) are written next to the code in lora_combine.cc.
#ifndef LORASERVE_CORE_LORA_LORA_COMBINE_H_
#define LORASERVE_CORE_LORA_LORA_COMBINE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora/adapter_types.h"
#include "core/lora/lora_adapter.h"
#include "core/model/model.h"

namespace loraserve::core {

// Builds the combined adapter `name` from `sources`. InvalidArgument for: no sources, weights of
// the wrong length, unequal ranks where the type needs equal ranks, DoRA / lora_bias /
// modules_to_save sources (PEFT cannot combine them either), bad density or svd options.
absl::StatusOr<std::shared_ptr<const LoraAdapter>> CombineAdapters(
    const std::string& name, const std::vector<std::shared_ptr<const LoraAdapter>>& sources,
    const CombineOptions& options, const Model& model,
    const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& load_options);

// PEFT merge_utils, exposed for property tests. `tensors` are same-shaped; `weights` one each.
// prune(random) draws its Bernoulli mask from `gen` and divides survivors by density (DARE).
at::Tensor PruneMagnitude(const at::Tensor& t, double density);
at::Tensor PruneRandom(const at::Tensor& t, double density, at::Generator& gen);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_COMBINE_H_
