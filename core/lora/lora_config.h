// PEFT `adapter_config.json` for LoRA (and DoRA) adapters, and PEFT's rules for which modules an
// adapter targets and with what rank and scale. Plain data and string matching; no LibTorch.
#ifndef LORASERVE_CORE_LORA_LORA_CONFIG_H_
#define LORASERVE_CORE_LORA_LORA_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/io/json_file.h"

namespace loraserve::core {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool use_dora = false;
  bool lora_bias = false;
  bool fan_in_fan_out = false;
  std::string bias = "none";  // none | all | lora_only
  // Ordered as in the file: the first matching key wins.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // Exactly one of these describes target_modules (both empty: null).
  std::optional<std::string> target_regex;        // a string: regex that must match the whole name
  std::vector<std::string> target_list;           // a list: exact name or "." + suffix
  bool target_all_linear = false;                 // "all-linear"
  std::optional<std::string> exclude_regex;
  std::vector<std::string> exclude_list;
  std::vector<std::string> modules_to_save;
  std::vector<int64_t> layers_to_transform;       // empty: all layers
  std::vector<std::string> layers_pattern;
  std::string base_model_name_or_path;
  std::string task_type;

  // Parses adapter_config.json. Only peft_type is required ("LORA"); unknown keys are ignored;
  // PEFT's defaults fill the rest. InvalidArgument for another peft_type, wrongly typed fields, and
  // inits that rewrite the base weights (pissa, olora, corda, loftq, lora_ga), which would only be
  // valid on a modified base model.
  static absl::StatusOr<LoraConfig> FromJson(const Json& json, absl::string_view source);
  // The adapter_config.json PEFT would write for this config.
  Json ToJson() const;

  // Rank and alpha for `module` (path without "base_model.model."), after rank_pattern /
  // alpha_pattern: the first key k (file order) with a full match of `(.*\.)?(k)` wins.
  int64_t RankFor(absl::string_view module) const;
  double AlphaFor(absl::string_view module) const;
  // lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora (PEFT LoraLayer.update_layer).
  double ScalingFor(absl::string_view module) const;

  // PEFT check_target_module_exists for one module of the base model. `is_linear` distinguishes
  // Linear from Embedding; `is_output_head` excludes lm_head from "all-linear".
  bool Targets(absl::string_view module, bool is_linear, bool is_output_head) const;
  // True if `module` is (or is inside) one of modules_to_save.
  bool SavesModule(absl::string_view module) const;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_CONFIG_H_
