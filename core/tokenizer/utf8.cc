// UTF-8 scanning, string helpers and GPT-2's byte-level tables (see utf8.h).
#include "core/tokenizer/utf8.h"

#include <cstdint>

namespace loraserve::core::tokenizer_internal {
namespace {

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

}  // namespace

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

size_t CharLen(std::string_view s, size_t i) {
  const Utf8Char c = ScanUtf8(s, i);
  return c.len;
}

size_t PrevCharStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

char32_t CodepointAt(std::string_view s, size_t i) { return ScanUtf8(s, i).cp; }

bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

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

}  // namespace loraserve::core::tokenizer_internal
