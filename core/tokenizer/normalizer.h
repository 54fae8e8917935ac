// The normalizer stage: parsing tokenizer.json's "normalizer" (Sequence, Prepend, Replace with a
// String or Regex pattern, Strip) and running it. Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_NORMALIZER_H_
#define LORASERVE_CORE_TOKENIZER_NORMALIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/io/json_file.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/tokenizer_json.h"

namespace loraserve::core::tokenizer_internal {

// Normalizer: a flattened list of steps applied to each text segment between added tokens.
struct NormalizerStep {
  enum class Kind { kPrepend, kReplaceString, kReplaceRegex, kStrip };
  Kind kind;
  std::string pattern;  // Prepend text, or Replace pattern.
  std::string content;  // Replace content.
  std::unique_ptr<RegexSplitter> regex;
  bool strip_left = false, strip_right = false;
};

// Appends the steps of normalizer `j` (a Sequence flattened; nothing for null) to `steps`.
// InvalidArgument for an unsupported type or a bad field.
absl::Status ParseNormalizer(const JsonReader& r, const Json& j,
                             std::vector<NormalizerStep>* steps);

// Runs the steps over `s` in order.
void Normalize(const std::vector<NormalizerStep>& steps, std::string* s);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_NORMALIZER_H_
