// Reading tokenizer.json fields with their types checked, for every stage's parser: nlohmann throws
// on type mismatches; these check types first and return InvalidArgument naming the file and the
// field. Also the field parsers that more than one stage shares. Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_TOKENIZER_JSON_H_
#define LORASERVE_CORE_TOKENIZER_TOKENIZER_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/io/json_file.h"

namespace loraserve::core::tokenizer_internal {

// Reads fields of one tokenizer.json; `source` (the file name) starts every error message.
// Immutable; safe to share between threads.
class JsonReader {
 public:
  explicit JsonReader(std::string_view source) : source_(source) {}

  // InvalidArgument "<source>: <where>: <what>".
  absl::Status Error(std::string_view where, std::string_view what) const;

  // Field `key` of `obj`, nullptr when missing or null.
  static const Json* Find(const Json& obj, const char* key);

  // Field `key`, or `fallback` when it is missing or null (InvalidArgument if there is none).
  absl::StatusOr<std::string> String(const Json& obj, const char* key, std::string_view where,
                                     std::optional<std::string_view> fallback) const;
  absl::StatusOr<bool> Bool(const Json& obj, const char* key, std::string_view where,
                            bool fallback) const;
  absl::StatusOr<int64_t> Int(const Json& obj, const char* key, std::string_view where,
                              std::optional<int64_t> fallback) const;

  // A {"String": s} or {"Regex": r} pattern object.
  struct Pattern {
    bool is_regex = false;
    std::string text;
  };
  absl::StatusOr<Pattern> PatternField(const Json& obj, std::string_view where) const;

 private:
  std::string source_;
};

// Reads a stage object of tokenizer.json: its "type", and for a "Sequence" each element of the
// array `list_key` in turn (recursively). Every element that is not a Sequence goes to
// `parse_one(r, j, type, where, args...)`; `stage` ("normalizer", "decoder", ...) names the object
// in errors and `where` is "<stage> <type>". With `null_ok`, a null object (or element) is
// skipped. InvalidArgument when "type" or the Sequence's array is missing, or what `parse_one`
// returns.
template <typename... Args>
absl::Status ParseStageOrSequence(const JsonReader& r, const Json& j, const char* stage,
                                  const char* list_key, bool null_ok,
                                  absl::Status (*parse_one)(const JsonReader& r, const Json& j,
                                                            const std::string& type,
                                                            const std::string& where, Args...),
                                  Args... args) {
  if (null_ok && j.is_null()) return absl::OkStatus();
  LORASERVE_ASSIGN_OR_RETURN(const std::string type, r.String(j, "type", stage, {}));
  const std::string where = absl::StrCat(stage, " ", type);
  if (type != "Sequence") return parse_one(r, j, type, where, args...);
  const Json* list = JsonReader::Find(j, list_key);
  if (list == nullptr || !list->is_array()) {
    return r.Error(where, absl::StrCat("missing \"", list_key, "\""));
  }
  for (const Json& element : *list) {
    LORASERVE_RETURN_IF_ERROR(
        ParseStageOrSequence(r, element, stage, list_key, null_ok, parse_one, args...));
  }
  return absl::OkStatus();
}

// One character of a JSON string field (Strip content, Metaspace replacement).
absl::StatusOr<std::string> SingleChar(const JsonReader& r, const Json& obj, const char* key,
                                       std::string_view where, std::string_view fallback);

// Metaspace's prepend_scheme, read by both the pre-tokenizer and the decoder.
enum class PrependScheme { kFirst, kAlways, kNever };

absl::StatusOr<PrependScheme> ParsePrependScheme(const JsonReader& r, const Json& j,
                                                 std::string_view where);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_TOKENIZER_JSON_H_
