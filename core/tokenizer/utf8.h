// UTF-8 scanning and the string helpers every tokenizer stage uses, and GPT-2's byte-level
// byte <-> character tables (ByteLevel pre-tokenizer and decoder). Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_UTF8_H_
#define LORASERVE_CORE_TOKENIZER_UTF8_H_

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace loraserve::core::tokenizer_internal {

inline constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD

// This Abseil build has its own absl::string_view (not std::string_view), which StrCat needs.
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

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
Utf8Char ScanUtf8(std::string_view s, size_t i);

bool IsValidUtf8(std::string_view s);

// Appends `s` to `out` with invalid sequences replaced by U+FFFD (from_utf8_lossy). If `final` is
// false, stops before a trailing kTruncated sequence. Returns the number of bytes consumed.
size_t AppendLossyUtf8(std::string_view s, bool final, std::string* out);

// Length of the (valid) character at s[i].
size_t CharLen(std::string_view s, size_t i);

// Start of the character that ends at `end` (valid UTF-8 assumed).
size_t PrevCharStart(std::string_view s, size_t end);

// Decoded character at s[i] (valid UTF-8 assumed).
char32_t CodepointAt(std::string_view s, size_t i);

// The Unicode White_Space property: what Oniguruma's `\s` (HF regexes) and Rust's
// char::is_whitespace (HF lstrip/rstrip, Strip normalizer) match. RE2's `\s` is only ASCII.
bool IsUnicodeWhitespace(char32_t c);

std::string ReplaceAll(std::string_view s, std::string_view pattern, std::string_view content);

// GPT-2 byte <-> unicode mapping (bytes_to_unicode): printable bytes map to themselves, the rest
// to U+0100 onwards, so every byte string becomes a printable string of the same length.
struct ByteLevelTables {
  std::array<std::string, 256> byte_to_char;  // UTF-8 of the mapped character.
  std::array<int, 512> char_to_byte;          // Mapped code point -> byte, -1 if unmapped.
};

const ByteLevelTables& GetByteLevelTables();

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_UTF8_H_
