#include "core/lora/lora_compose.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace loraserve::core {

// Linear modules an adapter changes: those with LoRA weights and those whose bias it saved.
std::vector<int> TouchedLinears(const LoraAdapter& a) {
  std::set<int> ids;
  for (const LoraModule& m : a.modules()) {
    if (!m.is_embedding()) ids.insert(m.linear_id);
  }
  for (int id = 0; id < a.num_linears(); ++id) {
    if (a.SavedBias(id).defined()) ids.insert(id);
  }
  return std::vector<int>(ids.begin(), ids.end());
}

// Adapters of `list` that touch linear `id` (LoRA weights or a saved bias), in order.
std::vector<const LoraAdapter*> Touching(const std::vector<std::shared_ptr<const LoraAdapter>>& list,
                                         int id) {
  std::vector<const LoraAdapter*> out;
  for (const auto& a : list) {
    if (a->ForLinear(id) != nullptr || a->SavedBias(id).defined()) out.push_back(a.get());
  }
  return out;
}

std::vector<const LoraAdapter*> WithEmbedding(const std::vector<std::shared_ptr<const LoraAdapter>>& list) {
  std::vector<const LoraAdapter*> out;
  for (const auto& a : list) {
    if (a->embedding() != nullptr) out.push_back(a.get());
  }
  return out;
}

// Merged weight and bias of one linear module for `adapters` (those touching it, in merge
// order), computed in fp32 from the checkpoint's tensors and cast to the model dtype.
//   plain LoRA:  W' = W + Σ s·B·A,   b' = b + Σ s·b_B (materialised when the layer has no bias)
//   DoRA (alone): W' = (m / ‖W + s·B·A‖_row) ⊙ (W + s·B·A)
std::pair<at::Tensor, at::Tensor> ComposeLinear(const at::Tensor& w0, const at::Tensor& b0, int id,
                                                const std::vector<const LoraAdapter*>& adapters) {
  if (adapters.empty()) return {w0, b0};
  at::Tensor w = w0.to(at::kFloat);
  at::Tensor b = b0.defined() ? b0.to(at::kFloat) : at::Tensor();
  for (const LoraAdapter* a : adapters) {
    // bias="all": the adapter's saved bias replaces the checkpoint's (its difference is added, so
    // several merged adapters compose).
    if (a->SavedBias(id).defined()) b = b + (a->SavedBias(id) - b0.to(at::kFloat));
    const LoraModule* m = a->ForLinear(id);
    if (m == nullptr) continue;
    w = w + m->Delta();
    if (m->is_dora()) w = w * m->dora_scale.unsqueeze(1);
    if (m->lora_bias.defined()) {
      at::Tensor lb = m->lora_bias * m->scaling;
      b = b.defined() ? b + lb : lb;
    }
  }
  return {w.to(w0.scalar_type()).contiguous(),
          b.defined() ? b.to(w0.scalar_type()).contiguous() : at::Tensor()};
}

at::Tensor ComposeEmbedding(const at::Tensor& e0, const std::vector<const LoraAdapter*>& adapters) {
  if (adapters.empty()) return e0;
  at::Tensor e = e0.to(at::kFloat);
  for (const LoraAdapter* a : adapters) {
    const LoraModule* m = a->embedding();
    e = e + m->Delta();
    if (m->is_dora()) e = e * m->dora_scale;  // [vocab, hidden] ⊙ [hidden]: per embedding column
  }
  return e.to(e0.scalar_type()).contiguous();
}

bool AllFinite(const at::Tensor& t) {
  if (!t.defined()) return true;
  if (t.is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {
    // One pass without temporaries (the idle Score path checks every logit).
    const float* p = t.data_ptr<float>();
    return std::all_of(p, p + t.numel(), [](float v) { return std::isfinite(v); });
  }
  return at::isfinite(t).all().item<bool>();
}

}  // namespace loraserve::core
