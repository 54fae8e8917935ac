// Oniguruma patterns translated to RE2, and the splitter that emulates `\s+(?!\S)` (see regex.h).
#include "core/tokenizer/regex.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/utf8.h"
#include "re2/re2.h"

namespace loraserve::core::tokenizer_internal {
namespace {

// The set of IsUnicodeWhitespace (utf8.h) as the body of an RE2 character class.
constexpr char kWhitespaceClassBody[] =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
// Oniguruma's Unicode `\w`: letters, marks, decimal digits, connector punctuation.
constexpr char kWordClassBody[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// Splits a pattern at its top-level `|`.
std::vector<std::string_view> TopLevelAlternatives(std::string_view p) {
  std::vector<std::string_view> alts;
  int depth = 0, class_depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      ++i;
      continue;
    }
    if (class_depth > 0) {
      if (c == '[') ++class_depth;
      if (c == ']') --class_depth;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      if (i + 1 < p.size() && p[i + 1] == '^') ++i;
      if (i + 1 < p.size() && p[i + 1] == ']') ++i;
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    } else if (c == '|' && depth == 0) {
      alts.push_back(p.substr(start, i - start));
      start = i + 1;
    }
  }
  alts.push_back(p.substr(start));
  return alts;
}

std::string JoinAlternatives(const std::vector<std::string_view>& alts, size_t from, size_t to) {
  std::string out;
  for (size_t i = from; i < to; ++i) {
    if (i > from) out += '|';
    out.append(alts[i]);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RE2>> CompileRe2(const std::string& pattern) {
  RE2::Options options;
  options.set_log_errors(false);
  // The \p{L} / \p{N} classes make large DFAs; past max_mem RE2 silently falls back to the much
  // slower NFA.
  options.set_max_mem(int64_t{64} << 20);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("regex does not compile with RE2: ", re->error(),
                                                   " (pattern: ", pattern, ")"));
  }
  return re;
}

}  // namespace

absl::StatusOr<std::string> TranslateRegex(std::string_view p) {
  std::string out;
  int class_depth = 0;
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return absl::InvalidArgumentError("regex ends with a backslash");
      const char e = p[i + 1];
      const bool in_class = class_depth > 0;
      switch (e) {
        case 's':
          absl::StrAppend(&out, in_class ? "" : "[", kWhitespaceClassBody, in_class ? "" : "]");
          break;
        case 'w':
          absl::StrAppend(&out, in_class ? "" : "[", kWordClassBody, in_class ? "" : "]");
          break;
        case 'd':
          out += "\\p{Nd}";
          break;
        case 'S':
        case 'W':
          if (in_class) {
            return absl::InvalidArgumentError(
                absl::StrCat("regex: \\", std::string(1, e), " inside [...] is not supported"));
          }
          absl::StrAppend(&out, "[^", e == 'S' ? kWhitespaceClassBody : kWordClassBody, "]");
          break;
        case 'D':
          out += "\\P{Nd}";
          break;
        case 'v':
          out += "\\x{0B}";
          break;
        default: {
          // Copy the escape with its whole (possibly multi-byte) character.
          const size_t len = CharLen(p, i + 1);
          out.append(p.substr(i, 1 + len));
          i += 1 + len;
          continue;
        }
      }
      i += 2;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // A leading ']' is literal.
      continue;
    }
    if (c == ']' && class_depth > 0) {
      --class_depth;
      out += c;
      ++i;
      continue;
    }
    if (c == '(' && class_depth == 0) {
      if (i + 1 < p.size() && p[i + 1] == '?') {
        const char k = i + 2 < p.size() ? p[i + 2] : '\0';
        const char k2 = i + 3 < p.size() ? p[i + 3] : '\0';
        if (k == '=' || k == '!' || (k == '<' && (k2 == '=' || k2 == '!'))) {
          return absl::InvalidArgumentError(
              "regex: lookaround is not supported (only the alternative \\s+(?!\\S))");
        }
        if (k == '<' || k == 'P' || k == '\'') {
          // Named group: we never read groups by name, so make it non-capturing.
          const size_t close = p.find(k == '\'' ? '\'' : '>', i + 3 + (k == 'P' ? 1 : 0));
          if (close == std::string_view::npos) {
            return absl::InvalidArgumentError("regex: unterminated group name");
          }
          out += "(?:";
          i = close + 1;
          continue;
        }
        out += c;
        ++i;
        continue;
      }
      out += "(?:";  // Capturing groups would shift our submatch numbers.
      ++i;
      continue;
    }
    if ((c == '^' || c == '$') && class_depth == 0) {
      // Oniguruma (Ruby syntax) anchors always match at line boundaries.
      absl::StrAppend(&out, "(?m:", std::string(1, c), ")");
      ++i;
      continue;
    }
    const size_t len = CharLen(p, i);
    out.append(p.substr(i, len));
    i += len;
  }
  return out;
}

RegexSplitter::RegexSplitter() = default;
RegexSplitter::~RegexSplitter() = default;

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(std::string_view pattern) {
  auto s = std::unique_ptr<RegexSplitter>(new RegexSplitter());
  const std::vector<std::string_view> alts = TopLevelAlternatives(pattern);
  size_t lookahead_at = alts.size();
  for (size_t i = 0; i < alts.size(); ++i) {
    if (alts[i] == "\\s+(?!\\S)") lookahead_at = i;
  }
  if (lookahead_at == alts.size()) {
    LORASERVE_ASSIGN_OR_RETURN(std::string translated, TranslateRegex(pattern));
    LORASERVE_ASSIGN_OR_RETURN(s->main_, CompileRe2(translated));
    return s;
  }
  // pattern = A | \s+(?!\S) | C. RE2 runs (A)|(\s+)|(C) with the whitespace run in group 1; see
  // FindMatches for how the lookahead is then decided by hand.
  s->ws_lookahead_ = true;
  const std::string a = JoinAlternatives(alts, 0, lookahead_at);
  const std::string c = JoinAlternatives(alts, lookahead_at + 1, alts.size());
  std::string main;
  if (!a.empty()) {
    LORASERVE_ASSIGN_OR_RETURN(std::string ta, TranslateRegex(a));
    absl::StrAppend(&main, "(?:", ta, ")|");
  }
  absl::StrAppend(&main, "([", kWhitespaceClassBody, "]+)");
  if (!c.empty()) {
    LORASERVE_ASSIGN_OR_RETURN(std::string tc, TranslateRegex(c));
    absl::StrAppend(&main, "|(?:", tc, ")");
    LORASERVE_ASSIGN_OR_RETURN(s->after_, CompileRe2(tc));
  }
  LORASERVE_ASSIGN_OR_RETURN(s->main_, CompileRe2(main));
  return s;
}

void RegexSplitter::FindMatches(std::string_view text,
                                std::vector<std::pair<size_t, size_t>>* out) const {
  const re2::StringPiece input(text.data(), text.size());
  const size_t n = text.size();
  re2::StringPiece groups[2];
  size_t pos = 0;
  while (pos < n) {
    if (!main_->Match(input, pos, n, RE2::UNANCHORED, groups, ws_lookahead_ ? 2 : 1)) break;
    const size_t s = static_cast<size_t>(groups[0].data() - text.data());
    size_t e = s + groups[0].size();
    if (ws_lookahead_ && groups[1].data() != nullptr && e < n) {
      // No alternative of A matched at s, and [s, e) is a maximal whitespace run followed by a
      // non-space. `\s+(?!\S)` backtracks to give the last whitespace character back (it then
      // starts the next match, e.g. as the optional space of ` ?\p{L}+`); with a single
      // whitespace character it fails and the alternatives after it get their turn.
      const size_t last = PrevCharStart(text, e);
      if (last > s) {
        e = last;
      } else {
        re2::StringPiece m;
        if (after_ != nullptr && after_->Match(input, s, n, RE2::ANCHOR_START, &m, 1)) {
          e = s + m.size();
        } else {
          pos = s + CharLen(text, s);  // No match starts at s after all.
          continue;
        }
      }
    }
    if (e == s) {  // Empty match: it splits nothing; step over one character.
      if (s >= n) break;
      pos = s + CharLen(text, s);
      continue;
    }
    out->emplace_back(s, e);
    pos = e;
  }
}

}  // namespace loraserve::core::tokenizer_internal
