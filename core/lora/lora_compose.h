#ifndef LORASERVE_CORE_LORA_LORA_COMPOSE_H_
#define LORASERVE_CORE_LORA_LORA_COMPOSE_H_

// The arithmetic of merging (internal to core/lora): which linears an adapter touches, and the
// merged weights of a set of adapters, always recomputed from the checkpoint's tensors.

#include <ATen/ATen.h>

#include <memory>
#include <utility>
#include <vector>

#include "core/lora/lora_adapter.h"

namespace loraserve::core {

// Linear modules an adapter changes: those with LoRA weights and those whose bias it saved.
std::vector<int> TouchedLinears(const LoraAdapter& a);
// Adapters of `list` that touch linear `id` (LoRA weights or a saved bias), in order.
std::vector<const LoraAdapter*> Touching(const std::vector<std::shared_ptr<const LoraAdapter>>& list, int id);
// Adapters of `list` with an embedding LoRA, in order.
std::vector<const LoraAdapter*> WithEmbedding(const std::vector<std::shared_ptr<const LoraAdapter>>& list);

// Merged weight and bias of one linear module for `adapters` (those touching it, in merge
// order), computed in fp32 from the checkpoint's tensors and cast to the model dtype; returns
// the checkpoint's own tensors when `adapters` is empty.
//   plain LoRA:  W' = W + Σ s·B·A,   b' = b + Σ s·b_B (materialised when the layer has no bias)
//   DoRA (alone): W' = (m / ‖W + s·B·A‖_row) ⊙ (W + s·B·A)
std::pair<at::Tensor, at::Tensor> ComposeLinear(const at::Tensor& w0, const at::Tensor& b0, int id,
                                                const std::vector<const LoraAdapter*>& adapters);
// The embedding with `adapters`' embedding LoRAs merged: E + Σ s·(B·A)ᵀ; DoRA (alone):
// (m / ‖E + ΔE‖_column) ⊙ (E + ΔE), the norm taken per hidden dimension over the vocabulary.
at::Tensor ComposeEmbedding(const at::Tensor& e0, const std::vector<const LoraAdapter*>& adapters);

bool AllFinite(const at::Tensor& t);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_COMPOSE_H_
