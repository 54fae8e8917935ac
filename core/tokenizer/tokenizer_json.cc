// Type-checked tokenizer.json field reading (see tokenizer_json.h).
#include "core/tokenizer/tokenizer_json.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core::tokenizer_internal {

absl::Status JsonReader::Error(std::string_view where, std::string_view what) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ": ", AV(where), ": ", AV(what)));
}

const Json* JsonReader::Find(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::string> JsonReader::String(const Json& obj, const char* key,
                                               std::string_view where,
                                               std::optional<std::string_view> fallback) const {
  const Json* f = Find(obj, key);
  if (f == nullptr) {
    if (fallback) return std::string(*fallback);
    return Error(where, absl::StrCat("missing field \"", key, "\""));
  }
  if (!f->is_string()) return Error(where, absl::StrCat("\"", key, "\" must be a string"));
  return f->get<std::string>();
}

absl::StatusOr<bool> JsonReader::Bool(const Json& obj, const char* key, std::string_view where,
                                      bool fallback) const {
  const Json* f = Find(obj, key);
  if (f == nullptr) return fallback;
  if (!f->is_boolean()) return Error(where, absl::StrCat("\"", key, "\" must be a boolean"));
  return f->get<bool>();
}

absl::StatusOr<int64_t> JsonReader::Int(const Json& obj, const char* key, std::string_view where,
                                        std::optional<int64_t> fallback) const {
  const Json* f = Find(obj, key);
  if (f == nullptr) {
    if (fallback) return *fallback;
    return Error(where, absl::StrCat("missing field \"", key, "\""));
  }
  if (!f->is_number_integer()) {
    return Error(where, absl::StrCat("\"", key, "\" must be an integer"));
  }
  return f->get<int64_t>();
}

absl::StatusOr<JsonReader::Pattern> JsonReader::PatternField(const Json& obj,
                                                             std::string_view where) const {
  const Json* p = Find(obj, "pattern");
  if (p == nullptr || !p->is_object()) return Error(where, "missing \"pattern\" object");
  Pattern out;
  if (const Json* s = Find(*p, "String"); s != nullptr && s->is_string()) {
    out.text = s->get<std::string>();
  } else if (const Json* r = Find(*p, "Regex"); r != nullptr && r->is_string()) {
    out.is_regex = true;
    out.text = r->get<std::string>();
  } else {
    return Error(where, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
  }
  return out;
}

absl::StatusOr<std::string> SingleChar(const JsonReader& r, const Json& obj, const char* key,
                                       std::string_view where, std::string_view fallback) {
  LORASERVE_ASSIGN_OR_RETURN(std::string s, r.String(obj, key, where, fallback));
  if (s.empty() || !IsValidUtf8(s) || CharLen(s, 0) != s.size()) {
    return r.Error(where, absl::StrCat("\"", key, "\" must be a single character"));
  }
  return s;
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const JsonReader& r, const Json& j,
                                                 std::string_view where) {
  if (JsonReader::Find(j, "prepend_scheme") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(const std::string s, r.String(j, "prepend_scheme", where, {}));
    if (s == "first") return PrependScheme::kFirst;
    if (s == "always") return PrependScheme::kAlways;
    if (s == "never") return PrependScheme::kNever;
    return r.Error(where, absl::StrCat("unknown prepend_scheme \"", s, "\""));
  }
  // Files from tokenizers < 0.14 carry add_prefix_space instead.
  LORASERVE_ASSIGN_OR_RETURN(const bool add, r.Bool(j, "add_prefix_space", where, true));
  return add ? PrependScheme::kAlways : PrependScheme::kNever;
}

}  // namespace loraserve::core::tokenizer_internal
