// Hugging Face (Oniguruma) regexes on RE2, for the Split / ByteLevel / Digits pre-tokenizers and
// the Replace normalizer. Internal to core/tokenizer.
//
// HF compiles pre-tokenizer patterns with Oniguruma; RE2 differs in three ways that matter here:
// `\s` (and `\w`, `\d`) are ASCII-only, there is no lookaround, and capturing groups would change
// our submatch numbering. TranslateRegex rewrites the first and last; the one lookahead every real
// tokenizer uses, the alternative `\s+(?!\S)`, is emulated by RegexSplitter.
#ifndef LORASERVE_CORE_TOKENIZER_REGEX_H_
#define LORASERVE_CORE_TOKENIZER_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace loraserve::core::tokenizer_internal {

// The RE2 pattern for an Oniguruma one: Unicode `\s`, `\w`, `\d` (and their negations), groups
// made non-capturing, `^` / `$` at line boundaries. InvalidArgument for lookaround (use
// RegexSplitter for `\s+(?!\S)`) and for `\S` / `\W` inside a character class.
absl::StatusOr<std::string> TranslateRegex(std::string_view p);

// Finds all matches of an HF (Oniguruma) pattern, leftmost-first and non-overlapping, exactly as
// Oniguruma's find_iter would. Immutable and thread-safe after Create.
class RegexSplitter {
 public:
  // InvalidArgument if the pattern does not translate (see TranslateRegex) or does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::string_view pattern);
  ~RegexSplitter();

  // Appends the [begin, end) byte ranges of the matches in `text` (valid UTF-8) to `out`.
  void FindMatches(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const;

 private:
  RegexSplitter();

  std::unique_ptr<re2::RE2> main_;
  std::unique_ptr<re2::RE2> after_;  // C alone, for the anchored retry.
  bool ws_lookahead_ = false;
};

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_REGEX_H_
