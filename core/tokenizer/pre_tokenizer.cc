// The pre-tokenizer stage: parse and run (see pre_tokenizer.h).
#include "core/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core::tokenizer_internal {
namespace {

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

absl::StatusOr<SplitBehavior> ParseBehavior(const JsonReader& r, const std::string& s,
                                            std::string_view where) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return r.Error(where, absl::StrCat("unknown split behavior \"", s, "\""));
}

void FindLiteral(std::string_view text, std::string_view literal,
                 std::vector<std::pair<size_t, size_t>>* out) {
  if (literal.empty()) return;
  for (size_t at = text.find(literal); at != std::string_view::npos;
       at = text.find(literal, at + literal.size())) {
    out->emplace_back(at, at + literal.size());
  }
}

// One pre-tokenizer that is not a Sequence.
absl::Status ParsePreTokenizerStep(const JsonReader& r, const Json& j, const std::string& type,
                                   const std::string& where, std::vector<PreTokenizerStep>* steps) {
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    LORASERVE_ASSIGN_OR_RETURN(step.add_prefix_space, r.Bool(j, "add_prefix_space", where, true));
    LORASERVE_ASSIGN_OR_RETURN(step.use_regex, r.Bool(j, "use_regex", where, true));
    if (step.use_regex) {
      LORASERVE_ASSIGN_OR_RETURN(step.regex, RegexSplitter::Create(kGpt2Pattern));
    }
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    LORASERVE_ASSIGN_OR_RETURN(const JsonReader::Pattern p, r.PatternField(j, where));
    if (p.is_regex) {
      auto re = RegexSplitter::Create(p.text);
      if (!re.ok()) return r.Error(where, std::string(re.status().message()));
      step.regex = std::move(re).value();
    } else {
      step.literal = p.text;
    }
    LORASERVE_ASSIGN_OR_RETURN(const std::string behavior, r.String(j, "behavior", where, {}));
    LORASERVE_ASSIGN_OR_RETURN(step.behavior, ParseBehavior(r, behavior, where));
    LORASERVE_ASSIGN_OR_RETURN(step.invert, r.Bool(j, "invert", where, false));
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    LORASERVE_ASSIGN_OR_RETURN(const bool individual, r.Bool(j, "individual_digits", where, false));
    // HF uses char::is_numeric, i.e. the N* categories.
    LORASERVE_ASSIGN_OR_RETURN(step.regex,
                               RegexSplitter::Create(individual ? "\\p{N}" : "\\p{N}+"));
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    LORASERVE_ASSIGN_OR_RETURN(step.replacement, SingleChar(r, j, "replacement", where, "\u2581"));
    LORASERVE_ASSIGN_OR_RETURN(step.prepend_scheme, ParsePrependScheme(r, j, where));
    LORASERVE_ASSIGN_OR_RETURN(step.split, r.Bool(j, "split", where, true));
  } else {
    return r.Error("pre_tokenizer",
                   absl::StrCat("unsupported pre_tokenizer type \"", type,
                                "\" (supported: Sequence, ByteLevel, Split, Metaspace, Digits)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

}  // namespace

absl::Status ParsePreTokenizer(const JsonReader& r, const Json& j,
                               std::vector<PreTokenizerStep>* steps) {
  return ParseStageOrSequence(r, j, "pre_tokenizer", "pretokenizers", /*null_ok=*/true,
                              ParsePreTokenizerStep, steps);
}

void SplitPiece(Piece&& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                SplitBehavior behavior, bool invert, std::vector<Piece>* out) {
  // (range, is_match) covering the whole piece.
  struct Part {
    size_t b, e;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) parts.push_back({prev, b, false});
    parts.push_back({b, e, true});
    prev = e;
  }
  if (prev < piece.text.size() || parts.empty()) parts.push_back({prev, piece.text.size(), false});
  if (invert) {
    for (Part& p : parts) p.match = !p.match;
  }

  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Part& p : parts) {
        if (!p.match) ranges.emplace_back(p.b, p.e);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Part& p : parts) ranges.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.match && !previous_match && !ranges.empty()) {
          ranges.back().second = p.e;
        } else {
          ranges.emplace_back(p.b, p.e);
        }
        previous_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool next_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !next_match && !ranges.empty()) {
          ranges.back().first = it->b;
        } else {
          ranges.emplace_back(it->b, it->e);
        }
        next_match = it->match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (i > 0 && parts[i].match == previous_match) {
          ranges.back().second = parts[i].e;
        } else {
          ranges.emplace_back(parts[i].b, parts[i].e);
        }
        previous_match = parts[i].match;
      }
      break;
    }
  }
  for (const auto& [b, e] : ranges) {
    if (e > b) out->push_back({piece.text.substr(b, e - b), piece.at_start && b == 0});
  }
}

void RunPreTokenizerStep(const PreTokenizerStep& step, std::vector<Piece>* pieces) {
  std::vector<Piece> out;
  std::vector<std::pair<size_t, size_t>> matches;
  switch (step.kind) {
    case PreTokenizerStep::Kind::kByteLevel: {
      const ByteLevelTables& tables = GetByteLevelTables();
      std::vector<Piece> split;
      for (Piece& p : *pieces) {
        if (step.add_prefix_space && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
        if (step.use_regex) {
          matches.clear();
          step.regex->FindMatches(p.text, &matches);
          SplitPiece(std::move(p), matches, SplitBehavior::kIsolated, false, &split);
        } else {
          split.push_back(std::move(p));
        }
      }
      for (Piece& p : split) {
        std::string mapped;
        mapped.reserve(p.text.size() * 2);
        for (const char c : p.text) mapped += tables.byte_to_char[static_cast<uint8_t>(c)];
        out.push_back({std::move(mapped), p.at_start});
      }
      break;
    }
    case PreTokenizerStep::Kind::kSplit:
      for (Piece& p : *pieces) {
        matches.clear();
        if (step.regex != nullptr) {
          step.regex->FindMatches(p.text, &matches);
        } else {
          FindLiteral(p.text, step.literal, &matches);
        }
        SplitPiece(std::move(p), matches, step.behavior, step.invert, &out);
      }
      break;
    case PreTokenizerStep::Kind::kMetaspace:
      for (Piece& p : *pieces) {
        p.text = ReplaceAll(p.text, " ", step.replacement);
        const bool prepend = step.prepend_scheme == PrependScheme::kAlways ||
                             (step.prepend_scheme == PrependScheme::kFirst && p.at_start);
        if (prepend && !p.text.empty() &&
            p.text.compare(0, step.replacement.size(), step.replacement) != 0) {
          p.text.insert(0, step.replacement);
        }
        if (step.split) {
          matches.clear();
          FindLiteral(p.text, step.replacement, &matches);
          SplitPiece(std::move(p), matches, SplitBehavior::kMergedWithNext, false, &out);
        } else if (!p.text.empty()) {
          out.push_back(std::move(p));
        }
      }
      break;
  }
  *pieces = std::move(out);
}

}  // namespace loraserve::core::tokenizer_internal
