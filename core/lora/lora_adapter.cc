#include "core/lora/lora_adapter.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/io/tensor_io.h"
#include "core/model/cpu_dot.h"

namespace loraserve::core {
namespace {

absl::Status Invalid(const std::string& adapter, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("adapter ", adapter, ": ", what));
}

// One pass over a tensor's values: whether all are finite, and the largest absolute row sum
// (rows = the first dimension; a 1-D tensor is one row).
struct ValueScan {
  bool finite = true;
  double max_row_abs_sum = 0;
};

template <typename T>
ValueScan ScanRows(const T* p, int64_t rows, int64_t cols) {
  ValueScan out;
  float bad = 0;  // x − x is 0 for finite x and NaN for Inf/NaN
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * cols;
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, badp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) {
      for (int k = 0; k < 8; ++k) {
        const float v = static_cast<float>(row[i + k]);
        part[k] += std::fabs(v);
        badp[k] += v - v;
      }
    }
    float sum = 0;
    for (; i < cols; ++i) {
      const float v = static_cast<float>(row[i]);
      sum += std::fabs(v);
      bad += v - v;
    }
    for (int k = 0; k < 8; ++k) {
      sum += part[k];
      bad += badp[k];
    }
    out.max_row_abs_sum = std::max(out.max_row_abs_sum, static_cast<double>(sum));
  }
  out.finite = bad == 0;
  return out;
}

#ifdef LORASERVE_CPU_AVX2
// ScanRows with AVX2: eight lanes and two accumulators per row (the portable loop above is SSE2,
// and the scan was half of an adapter's load time). float32 or bfloat16 (widened by a shift).
template <typename T>
LORASERVE_TARGET_AVX2 ValueScan ScanRowsAvx2(const T* p, int64_t rows, int64_t cols) {
  ValueScan out;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 bad = _mm256_setzero_ps();
  float bad_tail = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * cols;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
      const __m256 v0 = cpu::Load8(row + i), v1 = cpu::Load8(row + i + 8);
      s0 = _mm256_add_ps(s0, _mm256_and_ps(v0, abs_mask));
      s1 = _mm256_add_ps(s1, _mm256_and_ps(v1, abs_mask));
      bad = _mm256_add_ps(bad, _mm256_add_ps(_mm256_sub_ps(v0, v0), _mm256_sub_ps(v1, v1)));
    }
    for (; i + 8 <= cols; i += 8) {
      const __m256 v = cpu::Load8(row + i);
      s0 = _mm256_add_ps(s0, _mm256_and_ps(v, abs_mask));
      bad = _mm256_add_ps(bad, _mm256_sub_ps(v, v));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
    float sum = 0;
    for (float l : lanes) sum += l;
    for (; i < cols; ++i) {
      const float v = static_cast<float>(row[i]);
      sum += std::fabs(v);
      bad_tail += v - v;
    }
    out.max_row_abs_sum = std::max(out.max_row_abs_sum, static_cast<double>(sum));
  }
  const bool lanes_ok = _mm256_movemask_ps(_mm256_cmp_ps(bad, bad, _CMP_UNORD_Q)) == 0;
  out.finite = lanes_ok && bad_tail == 0;
  return out;
}

#endif

// ScanRows, in AVX2 where the CPU has it.
template <typename T>
ValueScan ScanRowsFast(const T* p, int64_t rows, int64_t cols) {
#ifdef LORASERVE_CPU_AVX2
  if (cpu::HasAvx2Fma()) return ScanRowsAvx2(p, rows, cols);
#endif
  return ScanRows(p, rows, cols);
}

// The loader's checks read every value once (ATen's isfinite + abs + sum + max read each tensor
// four times through temporaries: the bulk of an adapter's load time).
ValueScan Scan(const at::Tensor& t) {
  const int64_t rows = t.dim() >= 2 ? t.size(0) : 1;
  const int64_t cols = rows > 0 ? t.numel() / rows : 0;
  if (t.device().is_cpu() && t.is_contiguous() && t.dim() <= 2) {
    if (t.scalar_type() == at::kFloat) return ScanRowsFast(t.data_ptr<float>(), rows, cols);
    if (t.scalar_type() == at::kBFloat16) return ScanRowsFast(t.data_ptr<c10::BFloat16>(), rows, cols);
  }
  ValueScan out;
  const at::Tensor f = t.to(at::kFloat).reshape({rows, cols});
  out.finite = at::isfinite(f).all().item<bool>();
  if (rows > 0 && cols > 0) out.max_row_abs_sum = f.abs().sum(1).max().item<double>();
  return out;
}

// Refuses a module whose scaling is not finite, or whose delta could overflow fp32/bf16 on
// activations of ordinary size: |s·B·A·x|_∞ ≤ |s|·‖B‖_∞·‖A‖_∞·|x|_∞ (‖·‖_∞ the largest absolute
// row sum), and a gain above 1e30 leaves under 1e8 of headroom before 3.4e38 for |x|.
absl::Status CheckScaling(const std::string& adapter, const LoraConfig& config, const LoraModule& m,
                          double a_max_row_abs_sum, double b_max_row_abs_sum) {
  constexpr double kMaxGain = 1e30;
  const std::string source = absl::StrCat("lora_alpha ", config.AlphaFor(m.name), " / r ", m.rank,
                                          config.use_rslora ? " (rsLoRA: alpha/sqrt(r))" : "",
                                          " (lora_alpha, or the alpha_pattern / rank_pattern entry for it)");
  // Kernels take the scaling as a float: beyond 1e30 it is unusable even on zero weights
  // (inf · 0 = NaN).
  if (!std::isfinite(m.scaling) || std::abs(m.scaling) > kMaxGain) {
    return Invalid(adapter, absl::StrCat("module \"", m.name, "\": scaling ", m.scaling, " from ", source,
                                         std::isfinite(m.scaling) ? " is above 1e30" : " is not finite"));
  }
  const double gain = std::abs(m.scaling) * a_max_row_abs_sum * b_max_row_abs_sum;
  if (!(gain <= kMaxGain)) {
    return Invalid(adapter, absl::StrCat("module \"", m.name, "\": scaling ", m.scaling, " from ", source,
                                         " times its lora_A and lora_B makes a delta that overflows the compute dtype "
                                         "(gain ", gain, " > ", kMaxGain, ")"));
  }
  return absl::OkStatus();
}

// What one saved key holds.
enum class KeyKind { kLoraA, kLoraB, kLoraBias, kMagnitude, kEmbedA, kEmbedB, kBaseLayer, kSaved };

struct KeySuffix {
  absl::string_view suffix;
  KeyKind kind;
};

constexpr KeySuffix kSuffixes[] = {
    {".lora_A.weight", KeyKind::kLoraA},
    {".lora_B.weight", KeyKind::kLoraB},
    {".lora_B.bias", KeyKind::kLoraBias},
    {".lora_magnitude_vector", KeyKind::kMagnitude},
    {".lora_embedding_A", KeyKind::kEmbedA},
    {".lora_embedding_B", KeyKind::kEmbedB},
    {".base_layer.weight", KeyKind::kBaseLayer},
};

struct ModuleTensors {
  at::Tensor a, b, bias, magnitude, embed_a, embed_b, base_layer;
};

}  // namespace

at::Tensor LoraModule::Delta() const {
  at::Tensor d = at::matmul(b.to(at::kFloat), a.to(at::kFloat)) * scaling;
  return is_embedding() ? d.t().contiguous() : d;
}

absl::Status ValidateAdapterName(const std::string& name) {
  // "<name>" or "<namespace>/<name>" (the server keeps each tenant's adapters in its namespace).
  const size_t slash = name.find('/');
  const bool ok = [&] {
    auto part_ok = [](absl::string_view part) {
      if (part.empty() || part.size() > 128 || part == "." || part == "..") return false;
      for (char c : part) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
      }
      return true;
    };
    if (slash == std::string::npos) return part_ok(name);
    return part_ok(absl::string_view(name).substr(0, slash)) && part_ok(absl::string_view(name).substr(slash + 1));
  }();
  if (ok) return absl::OkStatus();
  if (name.empty() || name.size() > 257) {
    return absl::InvalidArgumentError("adapter name must be 1 to 128 characters");
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "adapter name \"", name, "\" may only contain [A-Za-z0-9._-] (with at most one namespace/ prefix)"));
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> LoraAdapter::Load(
    const std::string& name, const std::string& dir, const Model& model,
    const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& options,
    std::vector<std::string>* warnings) {
  LORASERVE_RETURN_IF_ERROR(ValidateAdapterName(name));
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("adapter directory ", dir, " not found"));
  const std::string config_path = JoinPath(dir, "adapter_config.json");
  LORASERVE_ASSIGN_OR_RETURN(Json json, ReadJsonFile(config_path));
  LORASERVE_ASSIGN_OR_RETURN(LoraConfig config, LoraConfig::FromJson(json, config_path));
  const std::string weights = JoinPath(dir, "adapter_model.safetensors");
  if (!FileExists(weights)) {
    if (FileExists(JoinPath(dir, "adapter_model.bin"))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "adapter ", name, ": only adapter_model.bin (legacy torch pickle) found in ", dir,
          "; convert it to adapter_model.safetensors (PEFT save_pretrained(safe_serialization=True))"));
    }
    return absl::NotFoundError(absl::StrCat("adapter ", name, ": ", weights, " not found"));
  }
  LORASERVE_ASSIGN_OR_RETURN(auto tensors, LoadSafetensors(weights));
  LORASERVE_ASSIGN_OR_RETURN(auto adapter,
                             FromTensors(name, config, tensors, model, base_weight, options, warnings));
  const_cast<LoraAdapter*>(adapter.get())->source_dir_ = dir;
  return adapter;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> LoraAdapter::FromTensors(
    const std::string& name, const LoraConfig& config,
    const std::map<std::string, at::Tensor>& tensors, const Model& model,
    const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& options,
    std::vector<std::string>* warnings) {
  LORASERVE_RETURN_IF_ERROR(ValidateAdapterName(name));
  const ModelConfig& mc = model.config();
  if (config.fan_in_fan_out && warnings != nullptr) {
    warnings->push_back("fan_in_fan_out=true ignored: Llama-family layers are nn.Linear");
  }
  if (!config.base_model_name_or_path.empty() && warnings != nullptr) {
    std::string base = config.base_model_name_or_path;
    while (!base.empty() && base.back() == '/') base.pop_back();
    const std::string tail = base.substr(base.find_last_of('/') + 1);
    if (tail != model.name()) {
      warnings->push_back(absl::StrCat("adapter was trained on \"", config.base_model_name_or_path,
                                       "\", the served model is \"", model.name(), "\""));
    }
  }
  // 1. Sort keys into modules.
  std::map<std::string, ModuleTensors> by_module;
  std::map<std::string, at::Tensor> saved_bias;
  at::Tensor saved_head;
  for (const auto& [key, t] : tensors) {
    if (!absl::StartsWith(key, kPeftPrefix)) {
      return Invalid(name, absl::StrCat("key \"", key, "\" does not start with \"", kPeftPrefix, "\""));
    }
    const std::string rest = key.substr(std::string(kPeftPrefix).size());
    bool matched = false;
    for (const KeySuffix& s : kSuffixes) {
      if (!absl::EndsWith(rest, s.suffix)) continue;
      const std::string module = rest.substr(0, rest.size() - s.suffix.size());
      ModuleTensors& m = by_module[module];
      switch (s.kind) {
        case KeyKind::kLoraA: m.a = t; break;
        case KeyKind::kLoraB: m.b = t; break;
        case KeyKind::kLoraBias: m.bias = t; break;
        case KeyKind::kMagnitude: m.magnitude = t; break;
        case KeyKind::kEmbedA: m.embed_a = t; break;
        case KeyKind::kEmbedB: m.embed_b = t; break;
        case KeyKind::kBaseLayer: m.base_layer = t; break;
        case KeyKind::kSaved: break;
      }
      matched = true;
      break;
    }
    if (matched) continue;
    // bias="all"/"lora_only": the module's own bias (PEFT may keep it under base_layer).
    if (absl::EndsWith(rest, ".bias")) {
      std::string module = rest.substr(0, rest.size() - 5);
      if (absl::EndsWith(module, ".base_layer")) module = module.substr(0, module.size() - 11);
      if (config.bias == "none") {
        return Invalid(name, absl::StrCat("key \"", key, "\" is a bias but the config says bias=\"none\""));
      }
      saved_bias[module] = t;
      continue;
    }
    // modules_to_save: a full copy of the module's weight under its own path.
    if (absl::EndsWith(rest, ".weight")) {
      const std::string module = rest.substr(0, rest.size() - 7);
      if (config.SavesModule(module)) {
        if (module != kHeadModule) {
          return Invalid(name, absl::StrCat("modules_to_save module \"", module,
                                            "\" is not supported (only lm_head)"));
        }
        saved_head = t;
        continue;
      }
    }
    return Invalid(name, absl::StrCat("key \"", key, "\" is not a LoRA weight of any supported kind"));
  }

  std::shared_ptr<LoraAdapter> adapter(new LoraAdapter());
  adapter->name_ = name;
  adapter->config_ = config;
  adapter->by_linear_.assign(model.linears().size(), nullptr);

  // 2. Every module with keys must exist in the base model and be targeted by the config; every
  //    targeted module must have keys.
  std::set<std::string> targeted;
  if (config.Targets(kEmbeddingModule, /*is_linear=*/false, /*is_output_head=*/false)) {
    targeted.insert(kEmbeddingModule);
  }
  for (const LinearModule& lm : model.linears()) {
    if (config.Targets(lm.name, /*is_linear=*/true, lm.name == kHeadModule)) targeted.insert(lm.name);
  }
  for (const auto& [module, mt] : by_module) {
    const bool is_embed = module == kEmbeddingModule;
    if (!is_embed && model.FindLinear(module) == nullptr) {
      return Invalid(name, absl::StrCat("has weights for \"", module, "\", which matches no module of the base model"));
    }
    if (!targeted.count(module)) {
      return Invalid(name, absl::StrCat("has weights for module \"", module,
                                        "\" but its config does not target it"));
    }
  }
  for (const std::string& module : targeted) {
    if (!by_module.count(module)) {
      return Invalid(name, absl::StrCat("config targets module \"", module,
                                        "\" but the file has no weights for it"));
    }
  }
  if (!config.modules_to_save.empty() && !saved_head.defined()) {
    bool wants_head = config.SavesModule(kHeadModule);
    if (wants_head) return Invalid(name, "modules_to_save lists lm_head but the file has no lm_head.weight");
  }

  // 3. Shapes, ranks, values.
  absl::Status status = CallTorch("validating adapter " + name, [&]() -> absl::Status {
    c10::InferenceMode guard;
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(model.options().device);
    const auto weights = f32.dtype(options.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
    auto finite = [&](const at::Tensor& t, const std::string& what) -> absl::Status {
      if (!Scan(t).finite) {
        return Invalid(name, absl::StrCat(what, " contains NaN or Inf"));
      }
      return absl::OkStatus();
    };
    auto shape_is = [&](const at::Tensor& t, std::vector<int64_t> want, const std::string& what) -> absl::Status {
      if (t.sizes() != at::IntArrayRef(want)) {
        return Invalid(name, absl::StrCat(what, " has shape ", c10::str(t.sizes()), ", expected ",
                                          c10::str(at::IntArrayRef(want))));
      }
      return absl::OkStatus();
    };
    adapter->modules_.reserve(by_module.size());
    // Embedding first, then linears in model order.
    std::vector<std::string> order;
    if (by_module.count(kEmbeddingModule)) order.push_back(kEmbeddingModule);
    for (const LinearModule& lm : model.linears()) {
      if (by_module.count(lm.name)) order.push_back(lm.name);
    }
    for (const std::string& module : order) {
      const ModuleTensors& mt = by_module.at(module);
      LoraModule m;
      m.name = module;
      m.rank = config.RankFor(module);
      m.scaling = config.ScalingFor(module);
      const bool is_embed = module == kEmbeddingModule;
      if (is_embed) {
        if (!mt.embed_a.defined() || !mt.embed_b.defined()) {
          return Invalid(name, absl::StrCat("embedding module \"", module, "\" needs lora_embedding_A and lora_embedding_B"));
        }
        if (mt.a.defined() || mt.b.defined() || mt.bias.defined()) {
          return Invalid(name, "embedding LoRA with lora_A/lora_B or lora_bias keys is not supported");
        }
        const int64_t r = mt.embed_a.size(0);
        LORASERVE_RETURN_IF_ERROR(shape_is(mt.embed_a, {r, mc.vocab_size}, module + ".lora_embedding_A"));
        LORASERVE_RETURN_IF_ERROR(shape_is(mt.embed_b, {mc.hidden_size, r}, module + ".lora_embedding_B"));
        if (r != m.rank) {
          return Invalid(name, absl::StrCat(module, " has rank ", r, " but the config says ", m.rank));
        }
        m.a = mt.embed_a.to(f32).contiguous();
        m.b = mt.embed_b.to(f32).contiguous();
        if (mt.base_layer.defined()) {
          LORASERVE_RETURN_IF_ERROR(shape_is(mt.base_layer, {mc.vocab_size, mc.hidden_size}, module + ".base_layer.weight"));
          LORASERVE_RETURN_IF_ERROR(finite(mt.base_layer, module + ".base_layer.weight"));
          // PEFT saves the whole base embedding; when it is the checkpoint's, it costs nothing.
          at::Tensor base = base_weight(-1);
          at::Tensor saved = mt.base_layer.to(base.options());
          if (!at::equal(saved, base)) adapter->embedding_base_ = saved.contiguous();
        }
        if (mt.magnitude.defined() != config.use_dora) {
          return Invalid(name, absl::StrCat("module \"", module, "\": lora_magnitude_vector ",
                                            mt.magnitude.defined() ? "present but use_dora is false"
                                                                   : "missing but use_dora is true"));
        }
        if (mt.magnitude.defined()) {
          // DoRA on an embedding (PEFT DoraEmbeddingLayer): g = m / ‖E + ΔE‖ per hidden dimension.
          LORASERVE_RETURN_IF_ERROR(shape_is(mt.magnitude, {mc.hidden_size}, module + ".lora_magnitude_vector"));
          m.magnitude = mt.magnitude.to(f32).contiguous();
          const at::Tensor& e0 = adapter->embedding_base_.defined() ? adapter->embedding_base_ : base_weight(-1);
          at::Tensor e = e0.to(at::kFloat) + m.Delta();
          m.dora_scale = (m.magnitude / e.norm(2, {0})).contiguous();
          adapter->has_dora_ = true;
        }
      } else {
        const LinearModule* lm = model.FindLinear(module);
        if (mt.embed_a.defined() || mt.embed_b.defined()) {
          return Invalid(name, absl::StrCat("linear module \"", module, "\" has embedding-style keys"));
        }
        if (mt.base_layer.defined()) {
          // PEFT (save_embedding_layers) saves the whole base weight of a targeted lm_head; it
          // must be the checkpoint's: an adapter does not replace a linear's base weight.
          const at::Tensor base = base_weight(lm->id);
          LORASERVE_RETURN_IF_ERROR(shape_is(mt.base_layer, {lm->out_features, lm->in_features},
                                             module + ".base_layer.weight"));
          if (!at::equal(mt.base_layer.to(base.options()), base)) {
            return Invalid(name, absl::StrCat(module, ".base_layer.weight differs from the base model's ",
                                              module, ".weight (an adapter for another base model?)"));
          }
        }
        if (!mt.a.defined() || !mt.b.defined()) {
          return Invalid(name, absl::StrCat("module \"", module, "\" needs both lora_A and lora_B"));
        }
        const int64_t r = mt.a.size(0);
        LORASERVE_RETURN_IF_ERROR(shape_is(mt.a, {r, lm->in_features}, module + ".lora_A.weight"));
        LORASERVE_RETURN_IF_ERROR(shape_is(mt.b, {lm->out_features, r}, module + ".lora_B.weight"));
        if (r != m.rank) {
          return Invalid(name, absl::StrCat(module, " has rank ", r, " but the config says ", m.rank));
        }
        m.linear_id = lm->id;
        // Stored in the adapter dtype (bfloat16 halves memory and reads); every product with
        // them accumulates in float32.
        m.a = mt.a.to(weights).contiguous();
        m.b = mt.b.to(weights).contiguous();
        if (mt.bias.defined() != config.lora_bias) {
          return Invalid(name, absl::StrCat("module \"", module, "\": lora_B.bias ",
                                            mt.bias.defined() ? "present but lora_bias is false"
                                                              : "missing but lora_bias is true"));
        }
        if (mt.bias.defined()) {
          LORASERVE_RETURN_IF_ERROR(shape_is(mt.bias, {lm->out_features}, module + ".lora_B.bias"));
          m.lora_bias = mt.bias.to(f32).contiguous();
        }
        if (mt.magnitude.defined() != config.use_dora) {
          return Invalid(name, absl::StrCat("module \"", module, "\": lora_magnitude_vector ",
                                            mt.magnitude.defined() ? "present but use_dora is false"
                                                                   : "missing but use_dora is true"));
        }
        if (mt.magnitude.defined()) {
          LORASERVE_RETURN_IF_ERROR(shape_is(mt.magnitude, {lm->out_features}, module + ".lora_magnitude_vector"));
          m.magnitude = mt.magnitude.to(f32).contiguous();
          at::Tensor w = base_weight(lm->id).to(at::kFloat) + m.Delta();
          m.dora_scale = (m.magnitude / w.norm(2, {1})).contiguous();
          adapter->has_dora_ = true;
        }
      }
      if (m.rank > options.max_rank) {
        return Invalid(name, absl::StrCat("module \"", module, "\" has rank ", m.rank,
                                          ", above the server's max_rank ", options.max_rank));
      }
      // lora_A and lora_B: finiteness and the row sums of the overflow bound in one pass each.
      const ValueScan a_scan = Scan(m.a), b_scan = Scan(m.b);
      if (!a_scan.finite) return Invalid(name, absl::StrCat(module, ".lora_A contains NaN or Inf"));
      if (!b_scan.finite) return Invalid(name, absl::StrCat(module, ".lora_B contains NaN or Inf"));
      for (const auto& [t, what] : {std::pair<const at::Tensor&, const char*>{m.lora_bias, "lora_B.bias"},
                                    {m.magnitude, "lora_magnitude_vector"}}) {
        if (t.defined()) LORASERVE_RETURN_IF_ERROR(finite(t, absl::StrCat(module, ".", what)));
      }
      if (m.dora_scale.defined()) LORASERVE_RETURN_IF_ERROR(finite(m.dora_scale, module + " DoRA scale"));
      LORASERVE_RETURN_IF_ERROR(CheckScaling(name, config, m, a_scan.max_row_abs_sum, b_scan.max_row_abs_sum));
      adapter->max_rank_ = std::max(adapter->max_rank_, m.rank);
      adapter->modules_.push_back(std::move(m));
    }
    adapter->bias_saved_.resize(model.linears().size());
    adapter->bias_names_.resize(model.linears().size());
    for (const auto& [module, t] : saved_bias) {
      const LinearModule* lm = model.FindLinear(module);
      if (lm == nullptr) {
        return Invalid(name, absl::StrCat("saved bias for \"", module, "\", which matches no linear module of the base model"));
      }
      if (!lm->bias.defined()) {
        return Invalid(name, absl::StrCat("saved bias for \"", module, "\", whose base layer has no bias"));
      }
      LORASERVE_RETURN_IF_ERROR(shape_is(t, {lm->out_features}, module + ".bias"));
      LORASERVE_RETURN_IF_ERROR(finite(t, module + ".bias"));
      adapter->bias_saved_[lm->id] = t.to(f32).contiguous();
      adapter->bias_names_[lm->id] = module;
      adapter->has_bias_override_ = true;
    }
    if (saved_head.defined()) {
      LORASERVE_RETURN_IF_ERROR(shape_is(saved_head, {mc.vocab_size, mc.hidden_size}, "lm_head.weight"));
      LORASERVE_RETURN_IF_ERROR(finite(saved_head, "lm_head.weight"));
      adapter->head_ = saved_head.to(model.linears().back().weight.options()).contiguous();
    }
    return absl::OkStatus();
  });
  LORASERVE_RETURN_IF_ERROR(status);
  for (LoraModule& m : adapter->modules_) {
    if (m.is_embedding()) {
      adapter->embedding_ = &m;
    } else {
      adapter->by_linear_[m.linear_id] = &m;
    }
    for (const at::Tensor& t : {m.a, m.b, m.lora_bias, m.magnitude, m.dora_scale}) {
      if (t.defined()) adapter->bytes_ += static_cast<int64_t>(t.nbytes());
    }
  }
  for (const at::Tensor& t : {adapter->head_, adapter->embedding_base_}) {
    if (t.defined()) adapter->bytes_ += static_cast<int64_t>(t.nbytes());
  }
  for (const at::Tensor& t : adapter->bias_saved_) {
    if (t.defined()) adapter->bytes_ += static_cast<int64_t>(t.nbytes());
  }
  if (adapter->modules_.empty() && !adapter->head_.defined()) {
    return Invalid(name, "has no LoRA weights");
  }
  return std::shared_ptr<const LoraAdapter>(std::move(adapter));
}

std::vector<std::pair<std::string, at::Tensor>> LoraAdapter::PeftTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  const std::string p = kPeftPrefix;
  for (const LoraModule& m : modules_) {
    if (m.is_embedding()) {
      out.emplace_back(p + m.name + ".lora_embedding_A", m.a);
      out.emplace_back(p + m.name + ".lora_embedding_B", m.b);
      if (m.magnitude.defined()) out.emplace_back(p + m.name + ".lora_magnitude_vector", m.magnitude);
      if (embedding_base_.defined()) out.emplace_back(p + m.name + ".base_layer.weight", embedding_base_);
      continue;
    }
    // Written as float32 whatever the adapter dtype (PEFT's own default).
    out.emplace_back(p + m.name + ".lora_A.weight", m.a.to(at::kFloat));
    out.emplace_back(p + m.name + ".lora_B.weight", m.b.to(at::kFloat));
    if (m.lora_bias.defined()) out.emplace_back(p + m.name + ".lora_B.bias", m.lora_bias);
    if (m.magnitude.defined()) out.emplace_back(p + m.name + ".lora_magnitude_vector", m.magnitude);
  }
  if (head_.defined()) out.emplace_back(p + "lm_head.weight", head_);
  for (size_t i = 0; i < bias_saved_.size(); ++i) {
    if (bias_saved_[i].defined()) out.emplace_back(p + bias_names_[i] + ".bias", bias_saved_[i]);
  }
  return out;
}

absl::Status SaveAdapter(const LoraAdapter& adapter, const std::string& dir) {
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("directory ", dir, " not found"));
  LORASERVE_RETURN_IF_ERROR(SaveSafetensors(JoinPath(dir, "adapter_model.safetensors"),
                                            adapter.PeftTensors(), {{"format", "pt"}}));
  return WriteFileAtomically(JoinPath(dir, "adapter_config.json"),
                             adapter.config().ToJson().dump(2) + "\n");
}

}  // namespace loraserve::core
