#include "core/lora/lora_combine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"

namespace loraserve::core {
namespace {

struct TypeName {
  CombinationType type;
  const char* name;
};
constexpr TypeName kTypes[] = {
    {CombinationType::kLinear, "linear"},
    {CombinationType::kCat, "cat"},
    {CombinationType::kSvd, "svd"},
    {CombinationType::kTies, "ties"},
    {CombinationType::kTiesSvd, "ties_svd"},
    {CombinationType::kDareLinear, "dare_linear"},
    {CombinationType::kDareTies, "dare_ties"},
    {CombinationType::kDareLinearSvd, "dare_linear_svd"},
    {CombinationType::kDareTiesSvd, "dare_ties_svd"},
    {CombinationType::kMagnitudePrune, "magnitude_prune"},
    {CombinationType::kMagnitudePruneSvd, "magnitude_prune_svd"},
};

bool IsSvdFamily(CombinationType t) {
  return t == CombinationType::kSvd || t == CombinationType::kTiesSvd ||
         t == CombinationType::kDareLinearSvd || t == CombinationType::kDareTiesSvd ||
         t == CombinationType::kMagnitudePruneSvd;
}

// The merge function applied to same-shaped tensors (factors, or full deltas for the svd family).
enum class MergeFn { kTaskArithmetic, kTies, kDareLinear, kDareTies, kMagnitudePrune };

MergeFn MergeFnOf(CombinationType t) {
  switch (t) {
    case CombinationType::kTies:
    case CombinationType::kTiesSvd: return MergeFn::kTies;
    case CombinationType::kDareLinear:
    case CombinationType::kDareLinearSvd: return MergeFn::kDareLinear;
    case CombinationType::kDareTies:
    case CombinationType::kDareTiesSvd: return MergeFn::kDareTies;
    case CombinationType::kMagnitudePrune:
    case CombinationType::kMagnitudePruneSvd: return MergeFn::kMagnitudePrune;
    default: return MergeFn::kTaskArithmetic;
  }
}

// PEFT merge_utils:
//   task_arithmetic = Σ λ_i·T_i
//   magnitude_prune = Σ λ_i·prune_magnitude(T_i)
//   dare_linear     = Σ λ_i·prune_random(T_i)            (survivors ÷ density)
//   ties            = disjoint_merge(λ_i·prune_magnitude(T_i), majority sign of the unweighted pruned)
//   dare_ties       = disjoint_merge(λ_i·prune_random(T_i),    majority sign of the unweighted pruned)
//   majority sign: total → sign(Σ T_i), frequency → sign(Σ sign(T_i)), 0 → +1
//   disjoint_merge: Σ λ_i·T_i·[sign(T_i) = majority] / max(#agreeing non-zero, 1)
at::Tensor Merge(MergeFn fn, const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                 double density, const std::string& sign_method, at::Generator& gen) {
  std::vector<at::Tensor> pruned;
  for (const at::Tensor& t : tensors) {
    switch (fn) {
      case MergeFn::kTaskArithmetic: pruned.push_back(t); break;
      case MergeFn::kTies:
      case MergeFn::kMagnitudePrune: pruned.push_back(PruneMagnitude(t, density)); break;
      case MergeFn::kDareLinear:
      case MergeFn::kDareTies: pruned.push_back(PruneRandom(t, density, gen)); break;
    }
  }
  at::Tensor stack = at::stack(pruned, 0);
  std::vector<int64_t> wshape(stack.dim(), 1);
  wshape[0] = static_cast<int64_t>(weights.size());
  at::Tensor w = at::tensor(weights, at::kDouble).to(stack.options()).view(wshape);
  if (fn == MergeFn::kTaskArithmetic || fn == MergeFn::kMagnitudePrune || fn == MergeFn::kDareLinear) {
    return (stack * w).sum(0);
  }
  at::Tensor sign = stack.sign();
  at::Tensor magnitude = sign_method == "frequency" ? sign.sum(0) : stack.sum(0);
  at::Tensor majority = at::where(magnitude >= 0, at::ones_like(magnitude), -at::ones_like(magnitude));
  at::Tensor agree = (sign == majority).to(stack.scalar_type());
  at::Tensor mixed = (stack * w * agree).sum(0);
  return mixed / at::clamp_min(agree.sum(0), 1.0);
}

}  // namespace

absl::StatusOr<CombinationType> ParseCombinationType(absl::string_view name) {
  for (const TypeName& t : kTypes) {
    if (name == t.name) return t.type;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown combination_type \"", name, "\""));
}

const char* CombinationTypeName(CombinationType type) {
  for (const TypeName& t : kTypes) {
    if (t.type == type) return t.name;
  }
  return "?";
}

at::Tensor PruneMagnitude(const at::Tensor& t, double density) {
  if (density >= 1) return t;
  // Keep the int(density·numel) largest |values| (PEFT magnitude_based_pruning).
  const int64_t k = static_cast<int64_t>(density * static_cast<double>(t.numel()));
  at::Tensor flat = t.reshape(-1);
  at::Tensor mask = at::zeros_like(flat);
  if (k > 0) mask.index_fill_(0, std::get<1>(at::topk(flat.abs(), k)), 1);
  return t * mask.view(t.sizes());
}

at::Tensor PruneRandom(const at::Tensor& t, double density, at::Generator& gen) {
  if (density >= 1) return t;
  // DARE: Bernoulli(density) keep-mask, survivors rescaled by 1/density.
  at::Tensor mask = at::bernoulli(at::full_like(t, density), gen);
  return t * mask / density;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> CombineAdapters(
    const std::string& name, const std::vector<std::shared_ptr<const LoraAdapter>>& sources,
    const CombineOptions& options, const Model& model,
    const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& load_options) {
  LORASERVE_RETURN_IF_ERROR(ValidateAdapterName(name));
  if (sources.empty()) return absl::InvalidArgumentError("combine needs at least one source adapter");
  if (options.weights.size() != sources.size()) {
    return absl::InvalidArgumentError(absl::StrCat("combine: ", sources.size(), " sources but ",
                                                   options.weights.size(), " weights"));
  }
  for (double w : options.weights) {
    if (!std::isfinite(w)) return absl::InvalidArgumentError("combine: weights must be finite");
  }
  if (!(options.density > 0 && options.density <= 1)) {
    return absl::InvalidArgumentError("combine: density must be in (0, 1]");
  }
  if (options.majority_sign_method != "total" && options.majority_sign_method != "frequency") {
    return absl::InvalidArgumentError("combine: majority_sign_method must be \"total\" or \"frequency\"");
  }
  if (options.svd_clamp < 0 || options.svd_clamp >= 1) {
    return absl::InvalidArgumentError("combine: svd_clamp must be 0 (off) or in (0, 1)");
  }
  if (options.svd_rank < 0) return absl::InvalidArgumentError("combine: svd_rank must be >= 0");
  std::set<std::string> seen;
  for (const auto& s : sources) {
    if (!seen.insert(s->name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("combine: source ", s->name(), " listed twice"));
    }
    if (s->has_dora() || s->head().defined() || s->embedding_base().defined() || s->has_bias_override()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "combine: source ", s->name(), " uses DoRA, modules_to_save, saved biases or a replaced embedding, "
          "which add_weighted_adapter cannot combine"));
    }
    for (const LoraModule& m : s->modules()) {
      if (m.lora_bias.defined()) {
        return absl::InvalidArgumentError(absl::StrCat("combine: source ", s->name(), " uses lora_bias"));
      }
    }
  }
  // A single source is treated as linear (PEFT).
  CombinationType type = sources.size() == 1 ? CombinationType::kLinear : options.type;
  const bool svd = IsSvdFamily(type);
  // New rank: equal ranks for linear/ties/dare/magnitude_prune; Σ r for cat; svd_rank or max r.
  int64_t new_rank = 0;
  if (type == CombinationType::kCat) {
    for (const auto& s : sources) new_rank += s->config().r;
  } else if (svd) {
    for (const auto& s : sources) new_rank = std::max(new_rank, s->max_rank());
    if (options.svd_rank > 0) new_rank = options.svd_rank;
  } else {
    for (const auto& s : sources) {
      for (const LoraModule& m : s->modules()) {
        if (new_rank == 0) new_rank = m.rank;
        if (m.rank != new_rank) {
          return absl::InvalidArgumentError(absl::StrCat(
              "combine: combination_type ", CombinationTypeName(type),
              " needs equal ranks, but ", s->name(), ":", m.name, " has rank ", m.rank, " and another ",
              new_rank, " (use cat or an svd type)"));
        }
      }
    }
  }
  // Target set: the union of the sources' modules, in model order (embedding first).
  std::vector<std::string> modules;
  std::map<std::string, int> linear_id;
  auto touches = [&](const std::string& module) {
    for (const auto& s : sources) {
      for (const LoraModule& m : s->modules()) {
        if (m.name == module) return true;
      }
    }
    return false;
  };
  if (touches(kEmbeddingModule)) modules.push_back(kEmbeddingModule);
  for (const LinearModule& lm : model.linears()) {
    if (touches(lm.name)) modules.push_back(lm.name);
  }

  LoraConfig config = sources[0]->config();
  config.r = new_rank;
  config.lora_alpha = static_cast<double>(new_rank);  // scaling 1
  config.use_rslora = false;
  config.use_dora = false;
  config.lora_bias = false;
  config.rank_pattern.clear();
  config.alpha_pattern.clear();
  config.target_regex.reset();
  config.target_all_linear = false;
  config.exclude_regex.reset();
  config.exclude_list.clear();
  config.modules_to_save.clear();
  config.layers_to_transform.clear();
  config.layers_pattern.clear();
  config.target_list = modules;  // exact names: the reloaded adapter targets exactly these

  std::map<std::string, at::Tensor> tensors;
  absl::Status st = CallTorch("combining adapters into " + name, [&]() -> absl::Status {
    c10::InferenceMode guard;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
    for (const std::string& module : modules) {
      // The sources that have this module, with c_i = w_i · s_i.
      std::vector<const LoraModule*> found;
      std::vector<double> w, c;
      for (size_t i = 0; i < sources.size(); ++i) {
        for (const LoraModule& m : sources[i]->modules()) {
          if (m.name != module) continue;
          found.push_back(&m);
          w.push_back(options.weights[i]);
          c.push_back(options.weights[i] * m.scaling);
        }
      }
      const LoraModule& first = *found[0];
      at::Tensor a_new, b_new;
      if (type == CombinationType::kCat) {
        // A' = concat_rows(c_i·A_i), B' = concat_cols(B_i): ΔW' = Σ c_i·B_i·A_i exactly; rows of
        // sources without this module stay zero (padded at the end).
        std::vector<at::Tensor> as, bs;
        for (size_t k = 0; k < found.size(); ++k) {
          as.push_back(found[k]->a.to(at::kFloat) * c[k]);
          bs.push_back(found[k]->b.to(at::kFloat));
        }
        at::Tensor a_cat = at::cat(as, 0), b_cat = at::cat(bs, 1);
        if (a_cat.size(0) > new_rank) {
          return absl::InvalidArgumentError(absl::StrCat("combine: module ", module, " has total rank ",
                                                         a_cat.size(0), " above the cat rank ", new_rank));
        }
        a_new = at::zeros({new_rank, first.a.size(1)}, a_cat.options());
        b_new = at::zeros({first.b.size(0), new_rank}, b_cat.options());
        a_new.narrow(0, 0, a_cat.size(0)).copy_(a_cat);
        b_new.narrow(1, 0, b_cat.size(1)).copy_(b_cat);
      } else if (svd) {
        // D = merge_fn(s_i·B_i·A_i; w_i), then truncated SVD: B' = U_k·diag(S_k), A' = V_kᵀ.
        std::vector<at::Tensor> deltas;
        for (const LoraModule* m : found) {
          deltas.push_back(at::matmul(m->b.to(at::kFloat), m->a.to(at::kFloat)) * m->scaling);
        }
        at::Tensor d = Merge(MergeFnOf(type), deltas, w, options.density, options.majority_sign_method, gen);
        auto [u, s, vh] = at::linalg_svd(d, /*full_matrices=*/false);
        const int64_t k = std::min<int64_t>(new_rank, s.size(0));
        at::Tensor uk = at::matmul(u.narrow(1, 0, k), at::diag(s.narrow(0, 0, k)));
        at::Tensor vk = vh.narrow(0, 0, k);
        if (options.svd_clamp > 0) {
          // PEFT: hi = quantile(concat(U, Vh), clamp); clamp both to [−hi, hi].
          at::Tensor dist = at::cat({uk.reshape(-1), vk.reshape(-1)});
          const double hi = at::quantile(dist, options.svd_clamp).item<double>();
          uk = uk.clamp(-hi, hi);
          vk = vk.clamp(-hi, hi);
        }
        a_new = at::zeros({new_rank, d.size(1)}, d.options());
        b_new = at::zeros({d.size(0), new_rank}, d.options());
        a_new.narrow(0, 0, k).copy_(vk);
        b_new.narrow(1, 0, k).copy_(uk);
      } else {
        // Factors combined separately: A with sign(c_i)·√|c_i|, B with √|c_i| (so cross terms
        // appear: not the weighted sum of deltas — PEFT behaviour).
        std::vector<at::Tensor> as, bs;
        std::vector<double> wa, wb;
        for (size_t k = 0; k < found.size(); ++k) {
          as.push_back(found[k]->a.to(at::kFloat));
          bs.push_back(found[k]->b.to(at::kFloat));
          const double root = std::sqrt(std::abs(c[k]));
          wa.push_back(c[k] < 0 ? -root : root);
          wb.push_back(root);
        }
        a_new = Merge(MergeFnOf(type), as, wa, options.density, options.majority_sign_method, gen);
        b_new = Merge(MergeFnOf(type), bs, wb, options.density, options.majority_sign_method, gen);
      }
      const std::string p = std::string(kPeftPrefix) + module;
      if (module == kEmbeddingModule) {
        tensors[p + ".lora_embedding_A"] = a_new.contiguous();
        tensors[p + ".lora_embedding_B"] = b_new.contiguous();
      } else {
        tensors[p + ".lora_A.weight"] = a_new.contiguous();
        tensors[p + ".lora_B.weight"] = b_new.contiguous();
      }
    }
    return absl::OkStatus();
  });
  LORASERVE_RETURN_IF_ERROR(st);
  return LoraAdapter::FromTensors(name, config, tensors, model, base_weight, load_options);
}

}  // namespace loraserve::core
