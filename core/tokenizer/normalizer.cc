// The normalizer stage: parse and run (see normalizer.h).
#include "core/tokenizer/normalizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core::tokenizer_internal {
namespace {

// One normalizer that is not a Sequence.
absl::Status ParseNormalizerStep(const JsonReader& r, const Json& j, const std::string& type,
                                 const std::string& where, std::vector<NormalizerStep>* steps) {
  NormalizerStep step;
  if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    LORASERVE_ASSIGN_OR_RETURN(step.pattern, r.String(j, "prepend", where, {}));
  } else if (type == "Replace") {
    LORASERVE_ASSIGN_OR_RETURN(const JsonReader::Pattern p, r.PatternField(j, where));
    LORASERVE_ASSIGN_OR_RETURN(step.content, r.String(j, "content", where, {}));
    if (p.text.empty()) return r.Error(where, "empty pattern");
    if (p.is_regex) {
      step.kind = NormalizerStep::Kind::kReplaceRegex;
      auto re = RegexSplitter::Create(p.text);
      if (!re.ok()) return r.Error(where, std::string(re.status().message()));
      step.regex = std::move(re).value();
    } else {
      step.kind = NormalizerStep::Kind::kReplaceString;
      step.pattern = p.text;
    }
  } else if (type == "Strip") {
    step.kind = NormalizerStep::Kind::kStrip;
    LORASERVE_ASSIGN_OR_RETURN(step.strip_left, r.Bool(j, "strip_left", where, true));
    LORASERVE_ASSIGN_OR_RETURN(step.strip_right, r.Bool(j, "strip_right", where, true));
  } else {
    return r.Error("normalizer", absl::StrCat("unsupported normalizer type \"", type,
                                              "\" (supported: Sequence, Prepend, Replace, Strip)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

}  // namespace

void Normalize(const std::vector<NormalizerStep>& steps, std::string* s) {
  for (const NormalizerStep& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::kPrepend:
        if (!s->empty()) s->insert(0, step.pattern);  // HF only prepends to non-empty text.
        break;
      case NormalizerStep::Kind::kReplaceString:
        *s = ReplaceAll(*s, step.pattern, step.content);
        break;
      case NormalizerStep::Kind::kReplaceRegex: {
        std::vector<std::pair<size_t, size_t>> matches;
        step.regex->FindMatches(*s, &matches);
        std::string out;
        size_t from = 0;
        for (const auto& [b, e] : matches) {
          out.append(*s, from, b - from);
          out += step.content;
          from = e;
        }
        out.append(*s, from, std::string::npos);
        *s = std::move(out);
        break;
      }
      case NormalizerStep::Kind::kStrip: {
        size_t b = 0, e = s->size();
        if (step.strip_left) {
          while (b < e && IsUnicodeWhitespace(CodepointAt(*s, b))) b += CharLen(*s, b);
        }
        if (step.strip_right) {
          while (e > b && IsUnicodeWhitespace(CodepointAt(*s, PrevCharStart(*s, e)))) {
            e = PrevCharStart(*s, e);
          }
        }
        *s = s->substr(b, e - b);
        break;
      }
    }
  }
}

absl::Status ParseNormalizer(const JsonReader& r, const Json& j,
                             std::vector<NormalizerStep>* steps) {
  return ParseStageOrSequence(r, j, "normalizer", "normalizers", /*null_ok=*/true,
                              ParseNormalizerStep, steps);
}

}  // namespace loraserve::core::tokenizer_internal
