#include "core/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <limits>
#include <queue>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "re2/re2.h"

namespace loraserve::core {
namespace {

constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD

// This Abseil build has its own absl::string_view (not std::string_view), which StrCat needs.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---------------------------------------------------------------------------------------------
// UTF-8

enum class Utf8Status { kValid, kInvalid, kTruncated };

struct Utf8Char {
  Utf8Status status;
  size_t len;   // Bytes consumed: the character, or the maximal invalid subpart (at least 1).
  char32_t cp;  // Only for kValid.
};

// Decodes the character at `s[i]` following the Unicode "maximal subpart" rule that Rust's
// String::from_utf8_lossy (and so HF) uses: an invalid sequence is replaced by one U+FFFD per
// maximal prefix of a well-formed sequence. kTruncated: a well-formed prefix cut off by the end of
// `s`, which more bytes could still complete (this is what the streaming decoder holds back).
Utf8Char ScanUtf8(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return {Utf8Status::kValid, 1, b0};
  size_t need;
  char32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // Allowed range of the second byte.
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // No overlong forms.
    if (b0 == 0xED) hi = 0x9F;  // No surrogates.
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // No overlong forms.
    if (b0 == 0xF4) hi = 0x8F;  // Nothing above U+10FFFF.
  } else {
    return {Utf8Status::kInvalid, 1, 0};
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {Utf8Status::kTruncated, k, 0};
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Status::kInvalid, k, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Status::kValid, need + 1, cp};
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const Utf8Char c = ScanUtf8(s, i);
    if (c.status != Utf8Status::kValid) return false;
    i += c.len;
  }
  return true;
}

// Appends `s` to `out` with invalid sequences replaced by U+FFFD (from_utf8_lossy). If `final` is
// false, stops before a trailing kTruncated sequence. Returns the number of bytes consumed.
size_t AppendLossyUtf8(std::string_view s, bool final, std::string* out) {
  size_t i = 0, valid_from = 0;
  while (i < s.size()) {
    const Utf8Char c = ScanUtf8(s, i);
    if (c.status == Utf8Status::kValid) {
      i += c.len;
      continue;
    }
    out->append(s.substr(valid_from, i - valid_from));
    if (c.status == Utf8Status::kTruncated && !final) return i;
    out->append(kReplacementChar);
    i += c.len;
    valid_from = i;
  }
  out->append(s.substr(valid_from));
  return s.size();
}

// Length of the (valid) character at s[i].
size_t CharLen(std::string_view s, size_t i) {
  const Utf8Char c = ScanUtf8(s, i);
  return c.len;
}

// Start of the character that ends at `end` (valid UTF-8 assumed).
size_t PrevCharStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The Unicode White_Space property: what Oniguruma's `\s` (HF regexes) and Rust's
// char::is_whitespace (HF lstrip/rstrip, Strip normalizer) match. RE2's `\s` is only ASCII.
bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// The same set as the body of an RE2 character class.
constexpr char kWhitespaceClassBody[] =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
// Oniguruma's Unicode `\w`: letters, marks, decimal digits, connector punctuation.
constexpr char kWordClassBody[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

// Decoded character at s[i] (valid UTF-8 assumed).
char32_t CodepointAt(std::string_view s, size_t i) { return ScanUtf8(s, i).cp; }

std::string ReplaceAll(std::string_view s, std::string_view pattern, std::string_view content) {
  std::string out;
  size_t from = 0;
  while (true) {
    const size_t at = s.find(pattern, from);
    if (at == std::string_view::npos) break;
    out.append(s.substr(from, at - from));
    out.append(content);
    from = at + pattern.size();
  }
  out.append(s.substr(from));
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode mapping (bytes_to_unicode): printable bytes map to themselves, the rest
// to U+0100 onwards, so every byte string becomes a printable string of the same length.

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_char;  // UTF-8 of the mapped character.
  std::array<int, 512> char_to_byte;          // Mapped code point -> byte, -1 if unmapped.
};

const ByteLevelTables& GetByteLevelTables() {
  static const ByteLevelTables* tables = [] {
    auto* t = new ByteLevelTables();
    t->char_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
      AppendUtf8(cp, &t->byte_to_char[b]);
      t->char_to_byte[cp] = b;
    }
    return t;
  }();
  return *tables;
}

// ---------------------------------------------------------------------------------------------
// Regexes. HF compiles pre-tokenizer patterns with Oniguruma; RE2 differs in three ways that
// matter here: `\s` (and `\w`, `\d`) are ASCII-only, there is no lookaround, and capturing groups
// would change our submatch numbering. TranslateRegex rewrites the first and last; the one
// lookahead every real tokenizer uses, the alternative `\s+(?!\S)`, is emulated by RegexSplitter.

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

// Finds all matches of an HF (Oniguruma) pattern, leftmost-first and non-overlapping, exactly as
// Oniguruma's find_iter would. Immutable and thread-safe after Create.
class RegexSplitter {
 public:
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::string_view pattern) {
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

  // Appends the [begin, end) byte ranges of the matches in `text` (valid UTF-8) to `out`.
  void FindMatches(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const {
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

 private:
  RegexSplitter() = default;

  std::unique_ptr<RE2> main_;
  std::unique_ptr<RE2> after_;  // C alone, for the anchored retry.
  bool ws_lookahead_ = false;
};

// ---------------------------------------------------------------------------------------------
// JSON helpers. nlohmann throws on type mismatches; these check types first and return
// InvalidArgument naming the field.

class JsonReader {
 public:
  explicit JsonReader(std::string_view source) : source_(source) {}

  absl::Status Error(std::string_view where, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", AV(where), ": ", AV(what)));
  }

  // Field `key` of `obj`, nullptr when missing or null.
  static const Json* Find(const Json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::string> String(const Json& obj, const char* key, std::string_view where,
                                     std::optional<std::string_view> fallback) const {
    const Json* f = Find(obj, key);
    if (f == nullptr) {
      if (fallback) return std::string(*fallback);
      return Error(where, absl::StrCat("missing field \"", key, "\""));
    }
    if (!f->is_string()) return Error(where, absl::StrCat("\"", key, "\" must be a string"));
    return f->get<std::string>();
  }

  absl::StatusOr<bool> Bool(const Json& obj, const char* key, std::string_view where,
                            bool fallback) const {
    const Json* f = Find(obj, key);
    if (f == nullptr) return fallback;
    if (!f->is_boolean()) return Error(where, absl::StrCat("\"", key, "\" must be a boolean"));
    return f->get<bool>();
  }

  absl::StatusOr<int64_t> Int(const Json& obj, const char* key, std::string_view where,
                              std::optional<int64_t> fallback) const {
    const Json* f = Find(obj, key);
    if (f == nullptr) {
      if (fallback) return *fallback;
      return Error(where, absl::StrCat("missing field \"", key, "\""));
    }
    if (!f->is_number_integer()) {
      return Error(where, absl::StrCat("\"", key, "\" must be an integer"));
    }
    return f->get<int64_t>();
  }

  // A {"String": s} or {"Regex": r} pattern object.
  struct Pattern {
    bool is_regex = false;
    std::string text;
  };
  absl::StatusOr<Pattern> PatternField(const Json& obj, std::string_view where) const {
    const Json* p = Find(obj, "pattern");
    if (p == nullptr || !p->is_object()) return Error(where, "missing \"pattern\" object");
    Pattern out;
    if (const Json* s = Find(*p, "String"); s != nullptr && s->is_string()) {
      out.text = s->get<std::string>();
    } else if (const Json* r = Find(*p, "Regex"); r != nullptr && r->is_string()) {
      out.is_regex = true;
      out.text = r->get<std::string>();
    } else {
      return Error(where, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    }
    return out;
  }

 private:
  std::string source_;
};

// One character of a JSON string field (Strip content, Metaspace replacement).
absl::StatusOr<std::string> SingleChar(const JsonReader& r, const Json& obj, const char* key,
                                       std::string_view where, std::string_view fallback) {
  LORASERVE_ASSIGN_OR_RETURN(std::string s, r.String(obj, key, where, fallback));
  if (s.empty() || !IsValidUtf8(s) || CharLen(s, 0) != s.size()) {
    return r.Error(where, absl::StrCat("\"", key, "\" must be a single character"));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Normalizer: a flattened list of steps applied to each text segment between added tokens.

struct NormalizerStep {
  enum class Kind { kPrepend, kReplaceString, kReplaceRegex, kStrip };
  Kind kind;
  std::string pattern;  // Prepend text, or Replace pattern.
  std::string content;  // Replace content.
  std::unique_ptr<RegexSplitter> regex;
  bool strip_left = false, strip_right = false;
};

absl::Status ParseNormalizer(const JsonReader& r, const Json& j,
                             std::vector<NormalizerStep>* steps) {
  if (j.is_null()) return absl::OkStatus();
  LORASERVE_ASSIGN_OR_RETURN(const std::string type, r.String(j, "type", "normalizer", {}));
  const std::string where = absl::StrCat("normalizer ", type);
  if (type == "Sequence") {
    const Json* list = JsonReader::Find(j, "normalizers");
    if (list == nullptr || !list->is_array()) return r.Error(where, "missing \"normalizers\"");
    for (const Json& n : *list) LORASERVE_RETURN_IF_ERROR(ParseNormalizer(r, n, steps));
    return absl::OkStatus();
  }
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

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer: a flattened list of steps, each mapping a list of pieces to a finer list.

struct Piece {
  std::string text;
  // True when the piece starts at offset 0 of the original input (Metaspace prepend_scheme
  // "first" only prepends there).
  bool at_start = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kFirst, kAlways, kNever };

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

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

absl::StatusOr<SplitBehavior> ParseBehavior(const JsonReader& r, const std::string& s,
                                            std::string_view where) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return r.Error(where, absl::StrCat("unknown split behavior \"", s, "\""));
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const JsonReader& r, const Json& j,
                                                 std::string_view where) {
  if (JsonReader::Find(j, "prepend_scheme") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(const std::string s, r.String(j, "prepend_scheme", where, {}));
    if (s == "first") return PrependScheme::kFirst;
    if (s == "always") return PrependScheme::kAlways;
    if (s == "never") return PrependScheme::kNever;
    return r.Error(where, absl::StrCat("unknown prepend_scheme \"", s, "\""));
  }
  // Files from tokenizers < 0.14 carry add_prefix_space instead.
  LORASERVE_ASSIGN_OR_RETURN(const bool add, r.Bool(j, "add_prefix_space", where, true));
  return add ? PrependScheme::kAlways : PrependScheme::kNever;
}

absl::Status ParsePreTokenizer(const JsonReader& r, const Json& j,
                               std::vector<PreTokenizerStep>* steps) {
  if (j.is_null()) return absl::OkStatus();
  LORASERVE_ASSIGN_OR_RETURN(const std::string type, r.String(j, "type", "pre_tokenizer", {}));
  const std::string where = absl::StrCat("pre_tokenizer ", type);
  if (type == "Sequence") {
    const Json* list = JsonReader::Find(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) return r.Error(where, "missing \"pretokenizers\"");
    for (const Json& p : *list) LORASERVE_RETURN_IF_ERROR(ParsePreTokenizer(r, p, steps));
    return absl::OkStatus();
  }
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

// Cuts `piece` at the given matches the way HF NormalizedString::split does for `behavior`.
// `matches` are sorted, non-overlapping [begin, end) ranges.
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

void FindLiteral(std::string_view text, std::string_view literal,
                 std::vector<std::pair<size_t, size_t>>* out) {
  if (literal.empty()) return;
  for (size_t at = text.find(literal); at != std::string_view::npos;
       at = text.find(literal, at + literal.size())) {
    out->emplace_back(at, at + literal.size());
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

// ---------------------------------------------------------------------------------------------
// BPE model.

struct BpeModel {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // Empty string for ids not in the vocabulary.
  std::vector<bool> has_id;
  // (left id << 32 | right id) -> (rank, merged id).
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::array<int32_t, 256> byte_ids;  // Ids of <0xNN>, -1 if absent.
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  const std::pair<int32_t, int32_t>* FindMerge(int32_t a, int32_t b) const {
    const auto it = merges.find(PairKey(a, b));
    return it == merges.end() ? nullptr : &it->second;
  }

  // Tokenizes one pre-tokenized word, appending ids. Mirrors HF BPE::merge_word + Word::merge_all.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
    if (word.empty()) return;
    if (ignore_merges) {
      const auto it = vocab.find(std::string(word));
      if (it != vocab.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int prev, next;
      bool removed;
    };
    std::vector<Symbol> symbols;
    const auto add = [&symbols](int32_t id) {
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({id, index - 1, -1, false});
      if (index > 0) symbols[index - 1].next = index;
    };
    int32_t pending_unk = -1;  // An unk not yet added: fuse_unk extends it over a run.
    std::string key;
    for (size_t i = 0; i < word.size();) {
      const size_t len = CharLen(word, i);
      key.clear();
      if (i > 0) key += continuing_subword_prefix;
      key.append(word.substr(i, len));
      if (i + len == word.size()) key += end_of_word_suffix;
      i += len;
      const auto it = vocab.find(key);
      if (it != vocab.end()) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(it->second);
        continue;
      }
      if (byte_fallback && std::all_of(key.begin(), key.end(), [this](char c) {
            return byte_ids[static_cast<uint8_t>(c)] >= 0;
          })) {
        // As in HF, a pending unk is not flushed first: it lands after these bytes.
        for (const char c : key) add(byte_ids[static_cast<uint8_t>(c)]);
        continue;
      }
      if (unk_id < 0) continue;  // No unk token: HF drops the character.
      if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
      pending_unk = unk_id;
    }
    if (pending_unk >= 0) add(pending_unk);

    // Lowest rank first, then leftmost. As in HF, a queued entry is still valid when the pair now
    // at its position merges to the same id, even if that pair's own rank differs.
    struct Merge {
      int32_t rank;
      int pos;
      int32_t new_id;
      bool operator<(const Merge& o) const {  // priority_queue pops the largest.
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Merge> queue;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      if (const auto* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
        queue.push({m->first, static_cast<int>(i), m->second});
      }
    }
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& cur = symbols[top.pos];
      if (cur.removed || cur.next < 0) continue;
      const int next_pos = cur.next;
      const Symbol right = symbols[next_pos];
      const auto* m = FindMerge(cur.id, right.id);
      if (m == nullptr || m->second != top.new_id) continue;  // Stale entry.
      cur.id = top.new_id;
      cur.next = right.next;
      symbols[next_pos].removed = true;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      if (cur.prev >= 0) {
        if (const auto* pm = FindMerge(symbols[cur.prev].id, cur.id)) {
          queue.push({pm->first, cur.prev, pm->second});
        }
      }
      if (cur.next >= 0) {
        if (const auto* nm = FindMerge(cur.id, symbols[cur.next].id)) {
          queue.push({nm->first, top.pos, nm->second});
        }
      }
    }
    for (const Symbol& s : symbols) {
      if (!s.removed) ids->push_back(s.id);
    }
  }
};

absl::Status ParseBpeModel(const JsonReader& r, const Json& j, BpeModel* m) {
  const std::string where = "model";
  const Json* vocab = JsonReader::Find(j, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return r.Error(where, "\"vocab\" must be an object");
  int32_t max_id = -1;
  m->vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
        it->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return r.Error(where, absl::StrCat("vocab entry \"", it.key(), "\" has no valid id"));
    }
    const auto id = static_cast<int32_t>(it->get<int64_t>());
    m->vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  m->id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  m->has_id.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : m->vocab) {
    m->id_to_token[id] = token;
    m->has_id[id] = true;
  }

  if (const Json* d = JsonReader::Find(j, "dropout");
      d != nullptr && (!d->is_number() || d->get<double>() != 0.0)) {
    return r.Error(where, "BPE dropout is not supported (it makes encoding random)");
  }
  LORASERVE_ASSIGN_OR_RETURN(m->fuse_unk, r.Bool(j, "fuse_unk", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->byte_fallback, r.Bool(j, "byte_fallback", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->ignore_merges, r.Bool(j, "ignore_merges", where, false));
  LORASERVE_ASSIGN_OR_RETURN(m->continuing_subword_prefix,
                             r.String(j, "continuing_subword_prefix", where, ""));
  LORASERVE_ASSIGN_OR_RETURN(m->end_of_word_suffix, r.String(j, "end_of_word_suffix", where, ""));
  if (JsonReader::Find(j, "unk_token") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(const std::string unk, r.String(j, "unk_token", where, {}));
    const auto it = m->vocab.find(unk);
    if (it == m->vocab.end()) {
      return r.Error(where, absl::StrCat("unk_token \"", unk, "\" is not in the vocab"));
    }
    m->unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = m->vocab.find(absl::StrFormat("<0x%02X>", b));
    m->byte_ids[b] = it == m->vocab.end() ? -1 : it->second;
  }

  const Json* merges = JsonReader::Find(j, "merges");
  if (merges == nullptr) return absl::OkStatus();
  if (!merges->is_array()) return r.Error(where, "\"merges\" must be an array");
  m->merges.reserve(merges->size());
  const auto lookup = [&](const std::string& token, size_t rank) -> absl::StatusOr<int32_t> {
    const auto it = m->vocab.find(token);
    if (it == m->vocab.end()) {
      return r.Error(where, absl::StrCat("merge ", rank, ": \"", token, "\" is not in the vocab"));
    }
    return it->second;
  };
  const size_t prefix_len = m->continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const Json& e = (*merges)[rank];
    std::string a, b;
    if (e.is_string()) {
      // Classic "a b" form: exactly one space (no merge part contains a space).
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return r.Error(where, absl::StrCat("merge ", rank, " \"", s, "\" is not \"a b\""));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return r.Error(where, absl::StrCat("merge ", rank, " must be \"a b\" or [\"a\", \"b\"]"));
    }
    LORASERVE_ASSIGN_OR_RETURN(const int32_t a_id, lookup(a, rank));
    LORASERVE_ASSIGN_OR_RETURN(const int32_t b_id, lookup(b, rank));
    // As HF: the merged token drops the continuing-subword prefix of the right part.
    LORASERVE_ASSIGN_OR_RETURN(const int32_t new_id,
                               lookup(a + b.substr(std::min(prefix_len, b.size())), rank));
    // A repeated pair keeps its last rank, as HF's map does.
    m->merges[BpeModel::PairKey(a_id, b_id)] = {static_cast<int32_t>(rank), new_id};
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Added tokens.

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
};

// Finds added tokens in text: leftmost match, longest at that position (HF's aho-corasick
// LeftmostLongest). Immutable and thread-safe.
class AddedTokenMatcher {
 public:
  struct Span {
    size_t begin, end;
    int32_t id;  // -1 for ordinary text.
  };

  // `content` is the text to look for (the normalized content for normalized tokens).
  void Add(const AddedToken& token, std::string content) {
    if (content.empty()) return;
    entries_.push_back({token, std::move(content)});
  }

  void Finish() {
    // Longest first, so the first hit at a position is the longest.
    std::stable_sort(entries_.begin(), entries_.end(),
                     [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
    for (size_t i = 0; i < entries_.size(); ++i) {
      by_first_byte_[static_cast<uint8_t>(entries_[i].text[0])].push_back(i);
    }
  }

  // Splits `text` into added-token spans and text spans (no empty text spans).
  void Split(std::string_view text, bool parse_special, std::vector<Span>* out) const {
    size_t start_offset = 0;
    for (size_t i = 0; i < text.size();) {
      const Entry* hit = nullptr;
      for (const size_t k : by_first_byte_[static_cast<uint8_t>(text[i])]) {
        const Entry& e = entries_[k];
        if (e.token.special && !parse_special) continue;
        if (text.compare(i, e.text.size(), e.text) == 0) {
          hit = &e;
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + hit->text.size();
      if (hit->token.single_word) {
        const bool start_ok = start == 0 || !IsWordChar(text, PrevCharStart(text, start));
        const bool stop_ok = stop == text.size() || !IsWordChar(text, stop);
        if (!start_ok || !stop_ok) {  // Consumed but not a token, as HF's match iterator does.
          i = stop;
          continue;
        }
      }
      if (hit->token.lstrip) {
        while (start > start_offset &&
               IsUnicodeWhitespace(CodepointAt(text, PrevCharStart(text, start)))) {
          start = PrevCharStart(text, start);
        }
      }
      if (hit->token.rstrip) {
        while (stop < text.size() && IsUnicodeWhitespace(CodepointAt(text, stop))) {
          stop += CharLen(text, stop);
        }
      }
      if (start > start_offset) out->push_back({start_offset, start, -1});
      out->push_back({start, stop, hit->token.id});
      start_offset = stop;
      i = stop;
    }
    if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
  }

 private:
  struct Entry {
    AddedToken token;
    std::string text;
  };

  // Rust's char::is_alphanumeric or '_' (approximated by the L and N categories).
  static bool IsWordChar(std::string_view text, size_t i) {
    static const RE2* word = new RE2("[\\p{L}\\p{N}_]");
    const size_t len = CharLen(text, i);
    return RE2::FullMatch(re2::StringPiece(text.data() + i, len), *word);
  }

  std::vector<Entry> entries_;
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

// ---------------------------------------------------------------------------------------------
// Decoder chain. Each step maps a list of token strings to a new list, as HF's decode_chain does.
// To support streaming, every step can also run on successive batches of tokens: it keeps in its
// state whatever a later token could still change and emits it once decided (or when `final`).
// For a step after Fuse/ByteLevel ("fused" input) the pieces it receives are consecutive parts of
// one logical token.

struct DecodeStep {
  enum class Kind {
    kReplace,
    kByteFallback,
    kFuse,
    kStrip,
    kByteLevel,
    kMetaspace,
    kJoinWithSpace,  // No decoder at all: HF joins the tokens with " ".
  };
  Kind kind;
  bool fused_input = false;
  std::string pattern, content;  // Replace; Strip / Metaspace use `content` as their character.
  size_t start = 0, stop = 0;    // Strip.
  bool metaspace_strip_first = true;
};

struct DecodeStepState {
  std::string carry;          // Undecided bytes / text (see each step).
  size_t tokens_seen = 0;     // Metaspace, JoinWithSpace.
  size_t left_remaining = 0;  // Strip on fused input: leading chars it may still strip.
};

std::vector<DecodeStepState> InitialDecodeStates(const std::vector<DecodeStep>& chain) {
  std::vector<DecodeStepState> states(chain.size());
  for (size_t i = 0; i < chain.size(); ++i) states[i].left_remaining = chain[i].start;
  return states;
}

std::string Concat(const std::vector<std::string>& tokens) {
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

// HF's <0xNN> byte tokens.
bool ParseByteToken(std::string_view t, uint8_t* byte) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    value = value * 16 + d;
  }
  *byte = static_cast<uint8_t>(value);
  return true;
}

// Strip with per-token semantics (HF Strip::decode_chain on one token).
std::string StripToken(const std::string& t, std::string_view ch, size_t start, size_t stop) {
  size_t b = 0, e = t.size();
  for (size_t k = 0; k < start && b < e && t.compare(b, ch.size(), ch) == 0; ++k) b += ch.size();
  for (size_t k = 0; k < stop && e >= b + ch.size() && t.compare(e - ch.size(), ch.size(), ch) == 0;
       ++k) {
    e -= ch.size();
  }
  return t.substr(b, e - b);
}

std::string ReplaceMetaspace(std::string_view t, std::string_view replacement, bool drop) {
  return ReplaceAll(t, replacement, drop ? "" : " ");
}

std::vector<std::string> RunDecodeStep(const DecodeStep& step, DecodeStepState& st,
                                       std::vector<std::string> tokens, bool final) {
  using Kind = DecodeStep::Kind;
  switch (step.kind) {
    case Kind::kReplace: {
      if (!step.fused_input) {
        for (std::string& t : tokens) t = ReplaceAll(t, step.pattern, step.content);
        return tokens;
      }
      // One logical token arriving in parts: scan left to right as a whole-token replace would,
      // and stop where the rest could still turn into a match.
      std::string text = std::move(st.carry) + Concat(tokens);
      st.carry.clear();
      std::string out;
      const std::string& pat = step.pattern;
      for (size_t i = 0; i < text.size();) {
        if (text.compare(i, pat.size(), pat) == 0) {
          out += step.content;
          i += pat.size();
          continue;
        }
        if (!final && text.size() - i < pat.size() &&
            pat.compare(0, text.size() - i, text, i, std::string::npos) == 0) {
          st.carry = text.substr(i);
          break;
        }
        const size_t len = CharLen(text, i);
        out.append(text, i, len);
        i += len;
      }
      return {std::move(out)};
    }
    case Kind::kByteFallback: {
      // A run of byte tokens becomes its string if the whole run is valid UTF-8, else one U+FFFD
      // per byte. A run at the end is undecided until a non-byte token (or the end) arrives.
      std::vector<std::string> out;
      const auto flush = [&] {
        if (st.carry.empty()) return;
        if (IsValidUtf8(st.carry)) {
          out.push_back(st.carry);
        } else {
          for (size_t k = 0; k < st.carry.size(); ++k) out.emplace_back(kReplacementChar);
        }
        st.carry.clear();
      };
      for (std::string& t : tokens) {
        uint8_t byte;
        if (ParseByteToken(t, &byte)) {
          st.carry.push_back(static_cast<char>(byte));
          continue;
        }
        flush();
        out.push_back(std::move(t));
      }
      if (final) flush();
      return out;
    }
    case Kind::kFuse:
      return {Concat(tokens)};
    case Kind::kStrip: {
      if (!step.fused_input) {
        for (std::string& t : tokens) t = StripToken(t, step.content, step.start, step.stop);
        return tokens;
      }
      std::string text = Concat(tokens);
      size_t b = 0;
      while (st.left_remaining > 0 && b < text.size()) {
        if (text.compare(b, step.content.size(), step.content) == 0) {
          b += step.content.size();
          --st.left_remaining;
        } else {
          st.left_remaining = 0;
        }
      }
      text.erase(0, b);
      if (step.stop == 0) return {std::move(text)};
      // Trailing content characters are stripped only if nothing else follows: hold back up to
      // `stop` of them.
      text = std::move(st.carry) + text;
      st.carry.clear();
      size_t e = text.size();
      for (size_t k = 0;
           k < step.stop && e >= step.content.size() &&
           text.compare(e - step.content.size(), step.content.size(), step.content) == 0;
           ++k) {
        e -= step.content.size();
      }
      if (!final) st.carry = text.substr(e);
      text.resize(e);
      return {std::move(text)};
    }
    case Kind::kByteLevel: {
      // Characters back to bytes (a token with any unmapped character, e.g. an added token with a
      // space, keeps its raw bytes), then lossy UTF-8 over all of them. An incomplete UTF-8
      // sequence at the end waits for more bytes.
      const ByteLevelTables& tables = GetByteLevelTables();
      for (const std::string& t : tokens) {
        std::string bytes;
        bool all_mapped = true;
        for (size_t i = 0; i < t.size();) {
          const char32_t cp = CodepointAt(t, i);
          if (cp >= tables.char_to_byte.size() || tables.char_to_byte[cp] < 0) {
            all_mapped = false;
            break;
          }
          bytes.push_back(static_cast<char>(tables.char_to_byte[cp]));
          i += CharLen(t, i);
        }
        st.carry += all_mapped ? bytes : t;
      }
      std::string out;
      const size_t used = AppendLossyUtf8(st.carry, final, &out);
      st.carry.erase(0, used);
      return {std::move(out)};
    }
    case Kind::kMetaspace: {
      if (step.fused_input) {  // Every part belongs to token 0.
        for (std::string& t : tokens) {
          t = ReplaceMetaspace(t, step.content, step.metaspace_strip_first);
        }
        return tokens;
      }
      for (std::string& t : tokens) {
        // HF drops every replacement character of the first token, not just a leading one.
        t = ReplaceMetaspace(t, step.content, step.metaspace_strip_first && st.tokens_seen == 0);
        ++st.tokens_seen;
      }
      return tokens;
    }
    case Kind::kJoinWithSpace:
      for (std::string& t : tokens) {
        if (st.tokens_seen++ > 0) t.insert(0, " ");
      }
      return tokens;
  }
  return tokens;
}

void RunDecodeChain(const std::vector<DecodeStep>& chain, std::vector<DecodeStepState>& states,
                    std::vector<std::string> tokens, bool final, std::string* out) {
  for (size_t i = 0; i < chain.size(); ++i) {
    tokens = RunDecodeStep(chain[i], states[i], std::move(tokens), final);
  }
  for (const std::string& t : tokens) *out += t;
}

absl::Status ParseDecoder(const JsonReader& r, const Json& j, std::vector<DecodeStep>* chain,
                          bool* fused) {
  LORASERVE_ASSIGN_OR_RETURN(const std::string type, r.String(j, "type", "decoder", {}));
  const std::string where = absl::StrCat("decoder ", type);
  if (type == "Sequence") {
    const Json* list = JsonReader::Find(j, "decoders");
    if (list == nullptr || !list->is_array()) return r.Error(where, "missing \"decoders\"");
    for (const Json& d : *list) LORASERVE_RETURN_IF_ERROR(ParseDecoder(r, d, chain, fused));
    return absl::OkStatus();
  }
  DecodeStep step;
  step.fused_input = *fused;
  using Kind = DecodeStep::Kind;
  if (type == "Replace") {
    step.kind = Kind::kReplace;
    LORASERVE_ASSIGN_OR_RETURN(const JsonReader::Pattern p, r.PatternField(j, where));
    if (p.is_regex) return r.Error(where, "a Regex pattern is not supported in the decoder");
    if (p.text.empty()) return r.Error(where, "empty pattern");
    step.pattern = p.text;
    LORASERVE_ASSIGN_OR_RETURN(step.content, r.String(j, "content", where, {}));
  } else if (type == "ByteFallback") {
    step.kind = Kind::kByteFallback;
    if (*fused) return r.Error(where, "ByteFallback after Fuse/ByteLevel is not supported");
  } else if (type == "Fuse") {
    step.kind = Kind::kFuse;
    *fused = true;
  } else if (type == "Strip") {
    step.kind = Kind::kStrip;
    LORASERVE_ASSIGN_OR_RETURN(step.content, SingleChar(r, j, "content", where, " "));
    LORASERVE_ASSIGN_OR_RETURN(const int64_t start, r.Int(j, "start", where, 0));
    LORASERVE_ASSIGN_OR_RETURN(const int64_t stop, r.Int(j, "stop", where, 0));
    if (start < 0 || stop < 0) return r.Error(where, "start/stop must not be negative");
    step.start = static_cast<size_t>(start);
    step.stop = static_cast<size_t>(stop);
  } else if (type == "ByteLevel") {
    step.kind = Kind::kByteLevel;
    if (*fused) return r.Error(where, "ByteLevel after Fuse/ByteLevel is not supported");
    *fused = true;
  } else if (type == "Metaspace") {
    step.kind = Kind::kMetaspace;
    LORASERVE_ASSIGN_OR_RETURN(step.content, SingleChar(r, j, "replacement", where, "\u2581"));
    LORASERVE_ASSIGN_OR_RETURN(const PrependScheme scheme, ParsePrependScheme(r, j, where));
    step.metaspace_strip_first = scheme != PrependScheme::kNever;
  } else {
    return r.Error("decoder", absl::StrCat("unsupported decoder type \"", type,
                                           "\" (supported: Sequence, Replace, ByteFallback, Fuse, "
                                           "Strip, ByteLevel, Metaspace)"));
  }
  chain->push_back(std::move(step));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Post-processor: the special ids put around a single sequence.

struct PostProcessor {
  std::vector<int32_t> prefix, suffix;
};

absl::Status ParsePostProcessor(const JsonReader& r, const Json& j, PostProcessor* pp) {
  if (j.is_null()) return absl::OkStatus();
  LORASERVE_ASSIGN_OR_RETURN(const std::string type, r.String(j, "type", "post_processor", {}));
  const std::string where = absl::StrCat("post_processor ", type);
  if (type == "Sequence") {
    const Json* list = JsonReader::Find(j, "processors");
    if (list == nullptr || !list->is_array()) return r.Error(where, "missing \"processors\"");
    for (const Json& p : *list) {
      LORASERVE_RETURN_IF_ERROR(ParsePostProcessor(r, p, pp));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // Only changes offsets.
  std::vector<int32_t> prefix, suffix;
  if (type == "TemplateProcessing") {
    const Json* single = JsonReader::Find(j, "single");
    if (single == nullptr || !single->is_array()) return r.Error(where, "missing \"single\"");
    const Json* specials = JsonReader::Find(j, "special_tokens");
    bool seen_sequence = false;
    for (const Json& item : *single) {
      if (JsonReader::Find(item, "Sequence") != nullptr) {
        if (seen_sequence) return r.Error(where, "\"single\" has more than one sequence");
        seen_sequence = true;
        continue;
      }
      const Json* st = JsonReader::Find(item, "SpecialToken");
      if (st == nullptr) return r.Error(where, "template items must be SpecialToken or Sequence");
      LORASERVE_ASSIGN_OR_RETURN(const std::string name, r.String(*st, "id", where, {}));
      const Json* entry = specials == nullptr ? nullptr : JsonReader::Find(*specials, name.c_str());
      const Json* ids = entry == nullptr ? nullptr : JsonReader::Find(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return r.Error(where, absl::StrCat("special token \"", name, "\" has no ids"));
      }
      for (const Json& id : *ids) {
        if (!id.is_number_integer()) return r.Error(where, "special token ids must be integers");
        (seen_sequence ? suffix : prefix).push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
    }
    if (!seen_sequence) return r.Error(where, "\"single\" has no $A sequence");
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const Json* f = JsonReader::Find(j, key);
      if (f == nullptr || !f->is_array() || f->size() != 2 || !(*f)[1].is_number_integer()) {
        return r.Error(where, absl::StrCat("\"", key, "\" must be [token, id]"));
      }
      (std::string(key) == "cls" ? prefix : suffix)
          .push_back(static_cast<int32_t>((*f)[1].get<int64_t>()));
    }
  } else {
    return r.Error("post_processor",
                   absl::StrCat("unsupported post_processor type \"", type,
                                "\" (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
                                "BertProcessing, Sequence)"));
  }
  // Processors in a Sequence wrap the result of the previous ones.
  pp->prefix.insert(pp->prefix.begin(), prefix.begin(), prefix.end());
  pp->suffix.insert(pp->suffix.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  BpeModel model;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecodeStep> decoder;
  PostProcessor post_processor;

  std::vector<AddedToken> added_tokens;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, size_t> added_by_id;   // -> index in added_tokens
  std::unordered_set<std::string> special_contents;  // HF skips special tokens by content.
  AddedTokenMatcher raw_matcher;         // normalized=false: matched before normalization.
  AddedTokenMatcher normalized_matcher;  // normalized=true: matched in normalized text.

  int32_t bos_id = -1, eos_id = -1;
  int32_t vocab_size = 0;

  // The token string decoding starts from, nullopt for unknown ids or skipped special tokens.
  const std::string* TokenForDecode(int32_t id, bool skip_special_tokens) const {
    const std::string* token = nullptr;
    if (const auto it = added_by_id.find(id); it != added_by_id.end()) {
      token = &added_tokens[it->second].content;
    } else if (id >= 0 && static_cast<size_t>(id) < model.has_id.size() && model.has_id[id]) {
      token = &model.id_to_token[id];
    }
    if (token != nullptr && skip_special_tokens && special_contents.count(*token) > 0) {
      return nullptr;
    }
    return token;
  }

  void EncodeText(std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
    std::vector<Piece> pieces;
    pieces.push_back({std::string(text), at_start});
    for (const PreTokenizerStep& step : pre_tokenizer) RunPreTokenizerStep(step, &pieces);
    for (const Piece& p : pieces) model.Tokenize(p.text, ids);
  }

  // The first of `names` that is a special added token.
  std::optional<int32_t> FindSpecialByName(std::initializer_list<std::string_view> names) const {
    for (const std::string_view name : names) {
      const auto it = added_by_content.find(std::string(name));
      if (it != added_by_content.end() && special_contents.count(std::string(name)) > 0) {
        return it->second;
      }
    }
    return std::nullopt;
  }

  static absl::StatusOr<std::unique_ptr<Impl>> Build(const Json& j, const JsonReader& r,
                                                     const TokenizerOptions& options);
};

absl::StatusOr<std::unique_ptr<Tokenizer::Impl>> Tokenizer::Impl::Build(
    const Json& j, const JsonReader& r, const TokenizerOptions& options) {
  if (!j.is_object()) return r.Error("top level", "must be a JSON object");
  auto impl = std::make_unique<Impl>();

  const Json* model = JsonReader::Find(j, "model");
  if (model == nullptr || !model->is_object()) return r.Error("model", "missing \"model\" object");
  std::string model_type;
  if (JsonReader::Find(*model, "type") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(model_type, r.String(*model, "type", "model", {}));
  } else if (JsonReader::Find(*model, "merges") != nullptr) {
    model_type = "BPE";  // Old files may omit the tag.
  }
  if (model_type != "BPE") {
    return r.Error("model", absl::StrCat("unsupported model type \"", model_type,
                                         "\" (only BPE is supported)"));
  }
  LORASERVE_RETURN_IF_ERROR(ParseBpeModel(r, *model, &impl->model));

  if (const Json* n = JsonReader::Find(j, "normalizer")) {
    LORASERVE_RETURN_IF_ERROR(ParseNormalizer(r, *n, &impl->normalizer));
  }
  if (const Json* p = JsonReader::Find(j, "pre_tokenizer")) {
    LORASERVE_RETURN_IF_ERROR(ParsePreTokenizer(r, *p, &impl->pre_tokenizer));
  }
  if (const Json* d = JsonReader::Find(j, "decoder")) {
    bool fused = false;
    LORASERVE_RETURN_IF_ERROR(ParseDecoder(r, *d, &impl->decoder, &fused));
  } else {
    impl->decoder.push_back({DecodeStep::Kind::kJoinWithSpace});
  }

  int32_t max_id = static_cast<int32_t>(impl->model.id_to_token.size()) - 1;
  if (const Json* added = JsonReader::Find(j, "added_tokens")) {
    if (!added->is_array()) return r.Error("added_tokens", "must be an array");
    for (const Json& a : *added) {
      AddedToken t;
      LORASERVE_ASSIGN_OR_RETURN(const int64_t id, r.Int(a, "id", "added_tokens", {}));
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
        return r.Error("added_tokens", "id out of range");
      }
      t.id = static_cast<int32_t>(id);
      LORASERVE_ASSIGN_OR_RETURN(t.content, r.String(a, "content", "added_tokens", {}));
      // HF gives an added token that is also in the model vocabulary the vocabulary's id (and only
      // warns when the file says otherwise).
      if (const auto it = impl->model.vocab.find(t.content); it != impl->model.vocab.end()) {
        t.id = it->second;
      }
      LORASERVE_ASSIGN_OR_RETURN(t.special, r.Bool(a, "special", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.lstrip, r.Bool(a, "lstrip", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.rstrip, r.Bool(a, "rstrip", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.single_word, r.Bool(a, "single_word", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.normalized, r.Bool(a, "normalized", "added_tokens", !t.special));
      max_id = std::max(max_id, t.id);
      impl->added_by_content[t.content] = t.id;
      impl->added_by_id[t.id] = impl->added_tokens.size();
      if (t.special) impl->special_contents.insert(t.content);
      impl->added_tokens.push_back(std::move(t));
    }
  }
  for (const AddedToken& t : impl->added_tokens) {
    if (t.normalized && !impl->normalizer.empty()) {
      // HF looks for normalized tokens by their normalized content in the normalized text.
      std::string content = t.content;
      Normalize(impl->normalizer, &content);
      impl->normalized_matcher.Add(t, std::move(content));
    } else if (t.normalized) {
      impl->normalized_matcher.Add(t, t.content);
    } else {
      impl->raw_matcher.Add(t, t.content);
    }
  }
  impl->raw_matcher.Finish();
  impl->normalized_matcher.Finish();
  impl->vocab_size = max_id + 1;

  if (const Json* p = JsonReader::Find(j, "post_processor")) {
    LORASERVE_RETURN_IF_ERROR(ParsePostProcessor(r, *p, &impl->post_processor));
  }

  if (options.bos_id) {
    impl->bos_id = *options.bos_id;
  } else if (!impl->post_processor.prefix.empty()) {
    impl->bos_id = impl->post_processor.prefix.front();
  } else {
    impl->bos_id = impl->FindSpecialByName({"<s>", "<|begin_of_text|>", "<bos>"}).value_or(-1);
  }
  if (options.eos_id) {
    impl->eos_id = *options.eos_id;
  } else if (!impl->post_processor.suffix.empty()) {
    impl->eos_id = impl->post_processor.suffix.back();
  } else {
    impl->eos_id =
        impl->FindSpecialByName({"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"}).value_or(-1);
  }
  return impl;
}

Tokenizer::Tokenizer(std::unique_ptr<const Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path,
                                                               const TokenizerOptions& options) {
  LORASERVE_ASSIGN_OR_RETURN(const Json j, ReadJsonFile(path));
  return FromJson(j, path, options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const Json& json,
                                                               std::string_view source,
                                                               const TokenizerOptions& options) {
  const JsonReader reader(source);
  try {
    LORASERVE_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Build(json, reader, options));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  } catch (const std::exception& e) {
    // The parsers check types before reading, so this is a backstop for anything they missed.
    return absl::InvalidArgumentError(
        absl::StrCat(AV(source), ": malformed tokenizer: ", e.what()));
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  const Impl& im = *impl_;
  std::string lossy;
  if (!IsValidUtf8(text)) {
    AppendLossyUtf8(text, /*final=*/true, &lossy);
    text = lossy;
  }
  std::vector<int32_t> ids;
  if (options.add_special_tokens) ids = im.post_processor.prefix;

  // 1. Added tokens that are not normalized are cut out of the raw text.
  std::vector<AddedTokenMatcher::Span> spans;
  im.raw_matcher.Split(text, options.parse_special, &spans);
  std::vector<AddedTokenMatcher::Span> inner;
  for (const auto& span : spans) {
    if (span.id >= 0) {
      ids.push_back(span.id);
      continue;
    }
    // 2. Each text segment is normalized on its own (so a Prepend normalizer adds "▁" to each),
    // 3. normalized added tokens are cut out of it, 4. the rest is pre-tokenized and run through
    // the model.
    std::string normalized(text.substr(span.begin, span.end - span.begin));
    Normalize(im.normalizer, &normalized);
    inner.clear();
    im.normalized_matcher.Split(normalized, options.parse_special, &inner);
    for (const auto& part : inner) {
      if (part.id >= 0) {
        ids.push_back(part.id);
      } else {
        im.EncodeText(std::string_view(normalized).substr(part.begin, part.end - part.begin),
                      span.begin == 0 && part.begin == 0, &ids);
      }
    }
  }
  if (options.add_special_tokens) {
    ids.insert(ids.end(), im.post_processor.suffix.begin(), im.post_processor.suffix.end());
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (const std::string* t = im.TokenForDecode(id, skip_special_tokens)) tokens.push_back(*t);
  }
  std::vector<DecodeStepState> states = InitialDecodeStates(im.decoder);
  std::string out;
  RunDecodeChain(im.decoder, states, std::move(tokens), /*final=*/true, &out);
  return out;
}

int32_t Tokenizer::bos_id() const { return impl_->bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->eos_id; }
int32_t Tokenizer::unk_id() const { return impl_->model.unk_id; }
int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added_by_content.find(key); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (const auto it = impl_->model.vocab.find(key); it != impl_->model.vocab.end()) {
    return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* t = impl_->TokenForDecode(id, /*skip_special_tokens=*/false);
  if (t == nullptr) return std::nullopt;
  return *t;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added_tokens[it->second].special;
}

// ---------------------------------------------------------------------------------------------

struct StreamingDecoder::State {
  std::vector<DecodeStepState> steps;
  bool finished = false;
};

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      state_(std::make_unique<State>()) {
  state_->steps = InitialDecodeStates(tokenizer_.impl_->decoder);
}

StreamingDecoder::~StreamingDecoder() = default;

std::string StreamingDecoder::Next(int32_t id) {
  std::string out;
  if (state_->finished) return out;
  const std::string* token = tokenizer_.impl_->TokenForDecode(id, skip_special_tokens_);
  if (token == nullptr) return out;
  RunDecodeChain(tokenizer_.impl_->decoder, state_->steps, {*token}, /*final=*/false, &out);
  return out;
}

std::string StreamingDecoder::Finish() {
  std::string out;
  if (state_->finished) return out;
  state_->finished = true;
  RunDecodeChain(tokenizer_.impl_->decoder, state_->steps, {}, /*final=*/true, &out);
  return out;
}

}  // namespace loraserve::core
