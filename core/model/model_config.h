// Hyper-parameters of a Llama-family checkpoint, parsed from Hugging Face `config.json`.
// Plain data; no LibTorch.
#ifndef LORASERVE_CORE_MODEL_MODEL_CONFIG_H_
#define LORASERVE_CORE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/json_file.h"

namespace loraserve::core {

struct RopeScaling {
  // "" (none), "linear" or "llama3".
  std::string type;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // llama, mistral, qwen2
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and for llama also o) projections carry a bias
  bool o_proj_bias = false;
  bool mlp_bias = false;
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;
  std::string hidden_act = "silu";
  // Mistral / Qwen2 sliding-window attention: a token attends to the previous `sliding_window`
  // positions (itself included); 0 = full attention.
  int64_t sliding_window = 0;

  // Parses and validates config.json content. InvalidArgument naming the field for an unsupported
  // model_type or activation, missing or inconsistent sizes.
  static absl::StatusOr<ModelConfig> FromJson(const Json& json, absl::string_view source);
  // The config.json content for this configuration (as written by the model maker and exports).
  Json ToJson() const;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_MODEL_CONFIG_H_
