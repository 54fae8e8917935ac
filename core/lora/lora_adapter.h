// One LoRA / DoRA adapter in PEFT format, validated against the served base model and immutable
// once built. Adapters are shared as std::shared_ptr<const LoraAdapter>: a forward that holds one
// keeps it alive even if the registry deletes or evicts it meanwhile.
#ifndef LORASERVE_CORE_LORA_LORA_ADAPTER_H_
#define LORASERVE_CORE_LORA_LORA_ADAPTER_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora/adapter_types.h"
#include "core/lora/lora_config.h"
#include "core/model/model.h"

namespace loraserve::core {

inline constexpr char kEmbeddingModule[] = "model.embed_tokens";
inline constexpr char kHeadModule[] = "lm_head";
inline constexpr char kPeftPrefix[] = "base_model.model.";

// The adapter's weights for one module. All tensors are float32 on the model's device: the LoRA
// contribution is computed in fp32 whatever the base dtype.
struct LoraModule {
  std::string name;     // Hugging Face module path
  int linear_id = -1;   // index into Model::linears(); -1 for the embedding
  int64_t rank = 0;
  double scaling = 1.0;  // lora_alpha / r (or / sqrt(r) with rsLoRA), per module after patterns
  at::Tensor a;          // Linear: lora_A [r, in];  Embedding: lora_embedding_A [r, vocab]
  at::Tensor b;          // Linear: lora_B [out, r]; Embedding: lora_embedding_B [hidden, r]
  at::Tensor lora_bias;  // lora_B.bias [out] (lora_bias=true) or undefined
  at::Tensor magnitude;  // DoRA lora_magnitude_vector [out] or undefined
  // DoRA: m / ‖W + s·B·A‖_row computed once from the checkpoint's weight W (PEFT detaches the
  // norm, so it is a constant of the adapter and the base).
  at::Tensor dora_scale;

  bool is_embedding() const { return linear_id < 0; }
  bool is_dora() const { return magnitude.defined(); }
  // ΔW = s·B·A as [out, in] (Linear) or ΔE = s·(B·A)ᵀ as [vocab, hidden] (Embedding), fp32.
  at::Tensor Delta() const;
};

class LoraAdapter {
 public:
  // Reads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors; legacy
  // adapter_model.bin is refused with a clear error) and validates it against `model`, whose
  // checkpoint weights `base_weight(linear_id)` returns (the pristine ones even while others are
  // merged). NotFound if the directory or its files are missing; InvalidArgument naming the key or
  // module for: keys for modules the config does not target, targeted modules without keys, keys
  // that match no base module, shape or rank mismatches, rank above max_rank, NaN/Inf values;
  // FailedPrecondition for inits that need a modified base. `warnings` (optional) receives
  // non-fatal findings such as a base_model_name_or_path that differs from the served model.
  static absl::StatusOr<std::shared_ptr<const LoraAdapter>> Load(
      const std::string& name, const std::string& dir, const Model& model,
      const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& options,
      std::vector<std::string>* warnings = nullptr);

  // Builds from tensors keyed as PEFT saves them ("base_model.model.<module>.lora_A.weight", ...),
  // with the same validation as Load.
  static absl::StatusOr<std::shared_ptr<const LoraAdapter>> FromTensors(
      const std::string& name, const LoraConfig& config,
      const std::map<std::string, at::Tensor>& tensors, const Model& model,
      const std::function<at::Tensor(int)>& base_weight, const AdapterLoadOptions& options,
      std::vector<std::string>* warnings = nullptr);

  const std::string& name() const { return name_; }
  const LoraConfig& config() const { return config_; }
  // Directory it was loaded from ("" for adapters built in memory, e.g. by combination).
  const std::string& source_dir() const { return source_dir_; }
  // The module's weights for linear `id`, or nullptr if this adapter does not touch it.
  const LoraModule* ForLinear(int id) const {
    return id >= 0 && id < static_cast<int>(by_linear_.size()) ? by_linear_[id] : nullptr;
  }
  const LoraModule* embedding() const { return embedding_; }
  // Every module with LoRA weights, in model order (embedding first).
  const std::vector<LoraModule>& modules() const { return modules_; }
  // modules_to_save: the adapter's own output head [vocab, hidden] (model dtype), or undefined.
  const at::Tensor& head() const { return head_; }
  // PEFT's saved copy of the base embedding when it differs from the checkpoint's (model dtype),
  // else undefined.
  const at::Tensor& embedding_base() const { return embedding_base_; }
  // bias="all"/"lora_only": the bias this adapter saved for linear `id` (fp32), which replaces
  // the checkpoint's bias for its rows; undefined when it saved none.
  const at::Tensor& SavedBias(int id) const {
    static const at::Tensor kNone;
    return id >= 0 && id < static_cast<int>(bias_saved_.size()) ? bias_saved_[id] : kNone;
  }
  bool has_bias_override() const { return has_bias_override_; }
  int num_linears() const { return static_cast<int>(by_linear_.size()); }
  int64_t max_rank() const { return max_rank_; }
  bool has_dora() const { return has_dora_; }
  // Bytes of tensor memory held.
  int64_t bytes() const { return bytes_; }

  // Tensors keyed exactly as PEFT's save_pretrained writes them.
  std::vector<std::pair<std::string, at::Tensor>> PeftTensors() const;

 private:
  LoraAdapter() = default;
  std::string name_;
  LoraConfig config_;
  std::string source_dir_;
  std::vector<LoraModule> modules_;
  std::vector<const LoraModule*> by_linear_;
  const LoraModule* embedding_ = nullptr;
  at::Tensor head_;
  at::Tensor embedding_base_;
  std::vector<at::Tensor> bias_saved_;   // per linear: the saved bias as written (for saving)
  std::vector<std::string> bias_names_;  // per linear: its module name where a bias was saved
  bool has_bias_override_ = false;
  int64_t max_rank_ = 0;
  bool has_dora_ = false;
  int64_t bytes_ = 0;
};

// Adapter names: [A-Za-z0-9._-]{1,128}. InvalidArgument otherwise.
absl::Status ValidateAdapterName(const std::string& name);

// Writes `adapter` as a PEFT directory (adapter_config.json + adapter_model.safetensors).
absl::Status SaveAdapter(const LoraAdapter& adapter, const std::string& dir);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_ADAPTER_H_
