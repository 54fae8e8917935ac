#include "core/io/json_file.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/base/status_macros.h"
#include "core/io/file_util.h"

namespace loraserve::core {
namespace {

absl::Status WrongType(absl::string_view source, absl::string_view key, absl::string_view want,
                       const Json& got) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", key, "\" must be ", want,
                                                 ", got ", got.type_name()));
}

const Json* Field(const Json& obj, absl::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  LORASERVE_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 512ull << 20));
  LORASERVE_ASSIGN_OR_RETURN(Json j, ParseJson(text, path));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": top level must be a JSON object"));
  }
  return j;
}

absl::StatusOr<int64_t> JsonInt(const Json& obj, absl::string_view key, int64_t fallback,
                                absl::string_view source) {
  const Json* f = Field(obj, key);
  if (f == nullptr) return fallback;
  if (f->is_number_integer()) return f->get<int64_t>();
  if (f->is_number_float()) {
    const double d = f->get<double>();
    // Only whole values inside int64's range convert (a cast of any other double is undefined).
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == std::trunc(d)) {
      return static_cast<int64_t>(d);
    }
  }
  return WrongType(source, key, "an integer", *f);
}

absl::StatusOr<double> JsonDouble(const Json& obj, absl::string_view key, double fallback,
                                  absl::string_view source) {
  const Json* f = Field(obj, key);
  if (f == nullptr) return fallback;
  if (f->is_number()) return f->get<double>();
  return WrongType(source, key, "a number", *f);
}

absl::StatusOr<bool> JsonBool(const Json& obj, absl::string_view key, bool fallback,
                              absl::string_view source) {
  const Json* f = Field(obj, key);
  if (f == nullptr) return fallback;
  if (f->is_boolean()) return f->get<bool>();
  return WrongType(source, key, "a boolean", *f);
}

absl::StatusOr<std::string> JsonString(const Json& obj, absl::string_view key,
                                       absl::string_view fallback, absl::string_view source) {
  const Json* f = Field(obj, key);
  if (f == nullptr) return std::string(fallback);
  if (f->is_string()) return f->get<std::string>();
  return WrongType(source, key, "a string", *f);
}

}  // namespace loraserve::core
