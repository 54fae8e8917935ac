// The pre-tokenizer stage: parsing tokenizer.json's "pre_tokenizer" (Sequence, ByteLevel, Split,
// Metaspace, Digits) and running it. Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_PRE_TOKENIZER_H_
#define LORASERVE_CORE_TOKENIZER_PRE_TOKENIZER_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/io/json_file.h"
#include "core/tokenizer/regex.h"
#include "core/tokenizer/tokenizer_json.h"

namespace loraserve::core::tokenizer_internal {

// Pre-tokenizer: a flattened list of steps, each mapping a list of pieces to a finer list.

struct Piece {
  std::string text;
  // True when the piece starts at offset 0 of the original input (Metaspace prepend_scheme
  // "first" only prepends there).
  bool at_start = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kByteLevel, kSplit, kMetaspace };
  Kind kind;
  // ByteLevel.
  bool add_prefix_space = false;
  bool use_regex = true;
  // Split (also Digits, ByteLevel's regex).
  std::unique_ptr<RegexSplitter> regex;
  std::string literal;  // Split on a String pattern when regex is null.
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // Metaspace.
  std::string replacement;
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
};

// Appends the steps of pre-tokenizer `j` (a Sequence flattened; nothing for null) to `steps`.
// InvalidArgument for an unsupported type, a bad field or a regex RE2 cannot run.
absl::Status ParsePreTokenizer(const JsonReader& r, const Json& j,
                               std::vector<PreTokenizerStep>* steps);

// Cuts `piece` at the given matches the way HF NormalizedString::split does for `behavior`.
// `matches` are sorted, non-overlapping [begin, end) ranges.
void SplitPiece(Piece&& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                SplitBehavior behavior, bool invert, std::vector<Piece>* out);

// Runs one step over all pieces, replacing them with the finer list.
void RunPreTokenizerStep(const PreTokenizerStep& step, std::vector<Piece>* pieces);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_PRE_TOKENIZER_H_
