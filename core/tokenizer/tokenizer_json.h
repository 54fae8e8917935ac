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

// One character of a JSON string field (Strip content, Metaspace replacement).
absl::StatusOr<std::string> SingleChar(const JsonReader& r, const Json& obj, const char* key,
                                       std::string_view where, std::string_view fallback);

// Metaspace's prepend_scheme, read by both the pre-tokenizer and the decoder.
enum class PrependScheme { kFirst, kAlways, kNever };

absl::StatusOr<PrependScheme> ParsePrependScheme(const JsonReader& r, const Json& j,
                                                 std::string_view where);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_TOKENIZER_JSON_H_
