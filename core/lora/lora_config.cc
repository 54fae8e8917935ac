#include "core/lora/lora_config.h"

#include <re2/re2.h>

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace loraserve::core {
namespace {

absl::Status Invalid(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

bool FullMatch(const std::string& pattern, absl::string_view text) {
  RE2 re(pattern, RE2::Quiet);
  return re.ok() && RE2::FullMatch(re2::StringPiece(text.data(), text.size()), re);
}

// A list of names, or a single regex string.
absl::Status ParseNames(const Json& j, absl::string_view key, absl::string_view source,
                        std::optional<std::string>* regex, std::vector<std::string>* list,
                        bool* all_linear) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {
    const std::string s = it->get<std::string>();
    if (all_linear != nullptr && s == "all-linear") {
      *all_linear = true;
      return absl::OkStatus();
    }
    RE2 re(s, RE2::Quiet);
    if (!re.ok()) {
      return Invalid(source, absl::StrCat("\"", key, "\" is not a valid regex: ", re.error()));
    }
    *regex = s;
    return absl::OkStatus();
  }
  if (it->is_array()) {
    for (const Json& e : *it) {
      if (!e.is_string()) return Invalid(source, absl::StrCat("\"", key, "\" entries must be strings"));
      list->push_back(e.get<std::string>());
    }
    return absl::OkStatus();
  }
  return Invalid(source, absl::StrCat("\"", key, "\" must be a string or a list of strings"));
}

// PEFT's layer index for layers_to_transform: the digits after ".<pattern>." (or, with no
// pattern, after the first ".<name>." followed by digits).
std::optional<int64_t> LayerIndex(absl::string_view module, const std::vector<std::string>& patterns) {
  std::string digits;
  const re2::StringPiece text(module.data(), module.size());
  if (patterns.empty()) {
    static const RE2 kAny(R"(.*\.[^.]*\.(\d+)\..*)");
    if (!RE2::FullMatch(text, kAny, &digits)) return std::nullopt;
  } else {
    bool found = false;
    for (const std::string& p : patterns) {
      RE2 re(absl::StrCat(R"(.*\.)", p, R"(\.(\d+)\..*)"), RE2::Quiet);
      if (re.ok() && RE2::FullMatch(text, re, &digits)) {
        found = true;
        break;
      }
    }
    if (!found) return std::nullopt;
  }
  return std::stoll(digits);
}

bool MatchesNames(absl::string_view module, const std::optional<std::string>& regex,
                  const std::vector<std::string>& list) {
  if (regex.has_value()) return FullMatch(*regex, module);
  for (const std::string& t : list) {
    if (module == t || absl::EndsWith(module, absl::StrCat(".", t))) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<LoraConfig> LoraConfig::FromJson(const Json& j, absl::string_view source) {
  if (!j.is_object()) return Invalid(source, "adapter config must be a JSON object");
  LoraConfig c;
  LORASERVE_ASSIGN_OR_RETURN(std::string peft_type, JsonString(j, "peft_type", "", source));
  if (peft_type != "LORA") {
    return Invalid(source, peft_type.empty()
                               ? std::string("missing \"peft_type\" (expected \"LORA\")")
                               : absl::StrCat("unsupported peft_type \"", peft_type, "\" (only LORA)"));
  }
  LORASERVE_ASSIGN_OR_RETURN(c.r, JsonInt(j, "r", 8, source));
  LORASERVE_ASSIGN_OR_RETURN(c.lora_alpha, JsonDouble(j, "lora_alpha", 8, source));
  LORASERVE_ASSIGN_OR_RETURN(c.use_rslora, JsonBool(j, "use_rslora", false, source));
  LORASERVE_ASSIGN_OR_RETURN(c.use_dora, JsonBool(j, "use_dora", false, source));
  LORASERVE_ASSIGN_OR_RETURN(c.lora_bias, JsonBool(j, "lora_bias", false, source));
  LORASERVE_ASSIGN_OR_RETURN(c.fan_in_fan_out, JsonBool(j, "fan_in_fan_out", false, source));
  LORASERVE_ASSIGN_OR_RETURN(c.bias, JsonString(j, "bias", "none", source));
  LORASERVE_ASSIGN_OR_RETURN(c.base_model_name_or_path,
                             JsonString(j, "base_model_name_or_path", "", source));
  LORASERVE_ASSIGN_OR_RETURN(c.task_type, JsonString(j, "task_type", "", source));
  if (c.r <= 0) return Invalid(source, "\"r\" must be positive");
  if (c.bias != "none" && c.bias != "all" && c.bias != "lora_only") {
    return Invalid(source, absl::StrCat("\"bias\" must be none, all or lora_only, got \"", c.bias, "\""));
  }
  // Inits that rewrite the base weights produce adapters valid only on that modified base.
  if (auto it = j.find("init_lora_weights"); it != j.end() && it->is_string()) {
    const std::string init = it->get<std::string>();
    for (const char* bad : {"pissa", "olora", "corda", "loftq", "lora_ga"}) {
      if (absl::StartsWith(init, bad)) {
        return absl::FailedPreconditionError(absl::StrCat(
            source, ": init_lora_weights=\"", init,
            "\" rewrites the base weights; such an adapter is only valid on that modified base "
            "model and cannot be served on the unmodified one"));
      }
    }
  }
  for (const char* key : {"loftq_config", "corda_config", "lora_ga_config"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_object() && !it->empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          source, ": \"", key, "\" is set: the adapter needs a modified base model"));
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_object()) return Invalid(source, absl::StrCat("\"", key, "\" must be an object"));
    for (auto e = it->begin(); e != it->end(); ++e) {
      RE2 re(e.key(), RE2::Quiet);
      if (!re.ok()) return Invalid(source, absl::StrCat("\"", key, "\" key \"", e.key(), "\" is not a valid regex"));
      if (!e.value().is_number()) {
        return Invalid(source, absl::StrCat("\"", key, "\"[\"", e.key(), "\"] must be a number"));
      }
      if (std::string(key) == "rank_pattern") {
        if (!e.value().is_number_integer() || e.value().get<int64_t>() <= 0) {
          return Invalid(source, absl::StrCat("rank_pattern[\"", e.key(), "\"] must be a positive integer"));
        }
        c.rank_pattern.emplace_back(e.key(), e.value().get<int64_t>());
      } else {
        c.alpha_pattern.emplace_back(e.key(), e.value().get<double>());
      }
    }
  }
  LORASERVE_RETURN_IF_ERROR(
      ParseNames(j, "target_modules", source, &c.target_regex, &c.target_list, &c.target_all_linear));
  LORASERVE_RETURN_IF_ERROR(
      ParseNames(j, "exclude_modules", source, &c.exclude_regex, &c.exclude_list, nullptr));
  if (auto it = j.find("modules_to_save"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return Invalid(source, "\"modules_to_save\" must be a list");
    for (const Json& e : *it) {
      if (!e.is_string()) return Invalid(source, "\"modules_to_save\" entries must be strings");
      c.modules_to_save.push_back(e.get<std::string>());
    }
  }
  if (auto it = j.find("layers_to_transform"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      c.layers_to_transform.push_back(it->get<int64_t>());
    } else if (it->is_array()) {
      for (const Json& e : *it) {
        if (!e.is_number_integer()) return Invalid(source, "\"layers_to_transform\" entries must be integers");
        c.layers_to_transform.push_back(e.get<int64_t>());
      }
    } else {
      return Invalid(source, "\"layers_to_transform\" must be an integer or a list");
    }
  }
  if (auto it = j.find("layers_pattern"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      c.layers_pattern.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const Json& e : *it) {
        if (!e.is_string()) return Invalid(source, "\"layers_pattern\" entries must be strings");
        c.layers_pattern.push_back(e.get<std::string>());
      }
    } else {
      return Invalid(source, "\"layers_pattern\" must be a string or a list");
    }
  }
  return c;
}

Json LoraConfig::ToJson() const {
  Json rp = Json::object(), ap = Json::object();
  for (const auto& [k, v] : rank_pattern) rp[k] = v;
  for (const auto& [k, v] : alpha_pattern) ap[k] = v;
  Json j = {
      {"peft_type", "LORA"},
      {"task_type", task_type.empty() ? Json() : Json(task_type)},
      {"base_model_name_or_path", base_model_name_or_path},
      {"r", r},
      {"lora_alpha", lora_alpha},
      {"lora_dropout", 0.0},
      {"use_rslora", use_rslora},
      {"use_dora", use_dora},
      {"lora_bias", lora_bias},
      {"fan_in_fan_out", fan_in_fan_out},
      {"bias", bias},
      {"rank_pattern", rp},
      {"alpha_pattern", ap},
      {"inference_mode", true},
      {"init_lora_weights", true},
  };
  if (target_all_linear) {
    j["target_modules"] = "all-linear";
  } else if (target_regex.has_value()) {
    j["target_modules"] = *target_regex;
  } else if (!target_list.empty()) {
    j["target_modules"] = target_list;
  } else {
    j["target_modules"] = nullptr;
  }
  if (exclude_regex.has_value()) j["exclude_modules"] = *exclude_regex;
  else if (!exclude_list.empty()) j["exclude_modules"] = exclude_list;
  else j["exclude_modules"] = nullptr;
  j["modules_to_save"] = modules_to_save.empty() ? Json() : Json(modules_to_save);
  j["layers_to_transform"] = layers_to_transform.empty() ? Json() : Json(layers_to_transform);
  j["layers_pattern"] = layers_pattern.empty() ? Json() : Json(layers_pattern);
  return j;
}

int64_t LoraConfig::RankFor(absl::string_view module) const {
  for (const auto& [key, value] : rank_pattern) {
    if (FullMatch(absl::StrCat(R"((.*\.)?()", key, ")"), module)) return value;
  }
  return r;
}

double LoraConfig::AlphaFor(absl::string_view module) const {
  for (const auto& [key, value] : alpha_pattern) {
    if (FullMatch(absl::StrCat(R"((.*\.)?()", key, ")"), module)) return value;
  }
  return lora_alpha;
}

double LoraConfig::ScalingFor(absl::string_view module) const {
  const double rank = static_cast<double>(RankFor(module));
  const double alpha = AlphaFor(module);
  return use_rslora ? alpha / std::sqrt(rank) : alpha / rank;
}

bool LoraConfig::SavesModule(absl::string_view module) const {
  for (const std::string& m : modules_to_save) {
    if (module == m || absl::EndsWith(module, absl::StrCat(".", m)) ||
        absl::StartsWith(module, absl::StrCat(m, ".")) ||
        absl::StrContains(module, absl::StrCat(".", m, "."))) {
      return true;
    }
  }
  return false;
}

bool LoraConfig::Targets(absl::string_view module, bool is_linear, bool is_output_head) const {
  if (SavesModule(module)) return false;
  if (MatchesNames(module, exclude_regex, exclude_list)) return false;
  if (target_all_linear) {
    if (!is_linear || is_output_head) return false;
  } else if (target_regex.has_value()) {
    return FullMatch(*target_regex, module);
  } else {
    for (const std::string& t : target_list) {
      if (module == t) return true;  // exact names skip the layer filter (PEFT)
    }
    if (!MatchesNames(module, std::nullopt, target_list)) return false;
  }
  if (!layers_to_transform.empty()) {
    std::optional<int64_t> idx = LayerIndex(module, layers_pattern);
    if (!idx.has_value()) return false;
    bool listed = false;
    for (int64_t l : layers_to_transform) listed |= (l == *idx);
    if (!listed) return false;
  }
  return true;
}

}  // namespace loraserve::core
