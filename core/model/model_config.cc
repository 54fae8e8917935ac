#include "core/model/model_config.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace loraserve::core {
namespace {

absl::Status Invalid(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const Json& j, absl::string_view source) {
  ModelConfig c;
  LORASERVE_ASSIGN_OR_RETURN(c.model_type, JsonString(j, "model_type", "", source));
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return Invalid(source, absl::StrCat("unsupported model_type \"", c.model_type,
                                        "\" (supported: llama, mistral, qwen2)"));
  }
  LORASERVE_ASSIGN_OR_RETURN(c.hidden_size, JsonInt(j, "hidden_size", 0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.intermediate_size, JsonInt(j, "intermediate_size", 0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.num_hidden_layers, JsonInt(j, "num_hidden_layers", 0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.num_attention_heads, JsonInt(j, "num_attention_heads", 0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.num_key_value_heads,
                             JsonInt(j, "num_key_value_heads", c.num_attention_heads, source));
  LORASERVE_ASSIGN_OR_RETURN(c.vocab_size, JsonInt(j, "vocab_size", 0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.max_position_embeddings,
                             JsonInt(j, "max_position_embeddings", 2048, source));
  LORASERVE_ASSIGN_OR_RETURN(c.rms_norm_eps, JsonDouble(j, "rms_norm_eps", 1e-6, source));
  LORASERVE_ASSIGN_OR_RETURN(c.rope_theta, JsonDouble(j, "rope_theta", 10000.0, source));
  LORASERVE_ASSIGN_OR_RETURN(c.tie_word_embeddings,
                             JsonBool(j, "tie_word_embeddings", false, source));
  LORASERVE_ASSIGN_OR_RETURN(c.hidden_act, JsonString(j, "hidden_act", "silu", source));
  if (c.hidden_act != "silu") {
    return Invalid(source, absl::StrCat("unsupported hidden_act \"", c.hidden_act, "\" (silu only)"));
  }
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2: q/k/v carry a bias, o_proj does not
  } else {
    LORASERVE_ASSIGN_OR_RETURN(c.attention_bias, JsonBool(j, "attention_bias", false, source));
    c.o_proj_bias = c.attention_bias;
  }
  LORASERVE_ASSIGN_OR_RETURN(c.mlp_bias, JsonBool(j, "mlp_bias", false, source));
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size"}) {
    LORASERVE_ASSIGN_OR_RETURN(int64_t v, JsonInt(j, key, 0, source));
    if (v <= 0) return Invalid(source, absl::StrCat("\"", key, "\" must be a positive integer"));
  }
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid(source, "num_attention_heads must be a multiple of num_key_value_heads");
  }
  LORASERVE_ASSIGN_OR_RETURN(c.head_dim,
                             JsonInt(j, "head_dim", c.hidden_size / c.num_attention_heads, source));
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return Invalid(source, "head_dim must be a positive even integer");
  }
  LORASERVE_ASSIGN_OR_RETURN(c.sliding_window, JsonInt(j, "sliding_window", 0, source));
  if (c.model_type == "qwen2") {
    // Qwen2 applies its window only when use_sliding_window is set.
    LORASERVE_ASSIGN_OR_RETURN(bool use, JsonBool(j, "use_sliding_window", false, source));
    if (!use) c.sliding_window = 0;
  } else if (c.model_type == "llama") {
    c.sliding_window = 0;
  }
  if (c.sliding_window < 0) return Invalid(source, "sliding_window must be >= 0");
  LORASERVE_ASSIGN_OR_RETURN(c.bos_token_id, JsonInt(j, "bos_token_id", -1, source));
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      c.eos_token_ids.push_back(it->get<int64_t>());
    } else if (it->is_array()) {
      for (const Json& e : *it) {
        if (!e.is_number_integer()) return Invalid(source, "eos_token_id entries must be integers");
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      return Invalid(source, "eos_token_id must be an integer or a list of integers");
    }
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Invalid(source, "rope_scaling must be an object");
    std::string type;
    LORASERVE_ASSIGN_OR_RETURN(type, JsonString(*it, "rope_type", "", source));
    if (type.empty()) {
      LORASERVE_ASSIGN_OR_RETURN(type, JsonString(*it, "type", "", source));
    }
    if (type != "llama3" && type != "linear" && type != "default") {
      return Invalid(source, absl::StrCat("unsupported rope_scaling type \"", type,
                                          "\" (supported: default, linear, llama3)"));
    }
    c.rope_scaling.type = type == "default" ? "" : type;
    LORASERVE_ASSIGN_OR_RETURN(c.rope_scaling.factor, JsonDouble(*it, "factor", 1.0, source));
    LORASERVE_ASSIGN_OR_RETURN(c.rope_scaling.low_freq_factor,
                               JsonDouble(*it, "low_freq_factor", 1.0, source));
    LORASERVE_ASSIGN_OR_RETURN(c.rope_scaling.high_freq_factor,
                               JsonDouble(*it, "high_freq_factor", 4.0, source));
    LORASERVE_ASSIGN_OR_RETURN(
        c.rope_scaling.original_max_position_embeddings,
        JsonInt(*it, "original_max_position_embeddings", 8192, source));
  }
  return c;
}

Json ModelConfig::ToJson() const {
  Json j = {
      {"architectures", {model_type == "qwen2"     ? "Qwen2ForCausalLM"
                         : model_type == "mistral" ? "MistralForCausalLM"
                                                   : "LlamaForCausalLM"}},
      {"model_type", model_type},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"hidden_act", hidden_act},
      {"tie_word_embeddings", tie_word_embeddings},
      {"attention_bias", attention_bias},
      {"mlp_bias", mlp_bias},
      {"torch_dtype", "float32"},
  };
  if (sliding_window > 0) {
    j["sliding_window"] = sliding_window;
    if (model_type == "qwen2") j["use_sliding_window"] = true;
  }
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  if (!rope_scaling.type.empty()) {
    j["rope_scaling"] = {{"rope_type", rope_scaling.type},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings",
                          rope_scaling.original_max_position_embeddings}};
  }
  return j;
}

}  // namespace loraserve::core
