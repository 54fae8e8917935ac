// Reading JSON configuration files (config.json, adapter_config.json, tokenizer.json) with errors
// that name the file and the field, and typed field access that never throws.
#ifndef LORASERVE_CORE_IO_JSON_FILE_H_
#define LORASERVE_CORE_IO_JSON_FILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace loraserve::core {

using Json = nlohmann::json;

// Parses `text`; InvalidArgument naming `source` and the parse position on malformed JSON.
absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view source);

// Reads and parses a JSON file whose top level must be an object. NotFound if missing.
absl::StatusOr<Json> ReadJsonFile(const std::string& path);

// Typed access to an optional field of a JSON object. A missing or null field gives `fallback`;
// a field of the wrong type gives InvalidArgument naming `source` and `key`.
absl::StatusOr<int64_t> JsonInt(const Json& obj, absl::string_view key, int64_t fallback,
                                absl::string_view source);
absl::StatusOr<double> JsonDouble(const Json& obj, absl::string_view key, double fallback,
                                  absl::string_view source);
absl::StatusOr<bool> JsonBool(const Json& obj, absl::string_view key, bool fallback,
                              absl::string_view source);
absl::StatusOr<std::string> JsonString(const Json& obj, absl::string_view key,
                                       absl::string_view fallback, absl::string_view source);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_IO_JSON_FILE_H_
