// UTF-8 scanning and the byte-level tables (core/tokenizer/utf8.h), against the Unicode standard's
// U+FFFD substitution of maximal subparts (also what Python's decode(errors="replace") gives) and
// the tests' own bytes_to_unicode().
#include "core/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/core/tokenizer/tokenizer_testing.h"

namespace loraserve::core::tokenizer_internal {
namespace {

std::string Lossy(const std::string& s) {
  std::string out;
  EXPECT_EQ(AppendLossyUtf8(s, /*final=*/true, &out), s.size());
  return out;
}

TEST(Utf8Test, LossyReplacesEachMaximalSubpart) {
  // The Unicode standard's example (section 3.9, "U+FFFD Substitution of Maximal Subparts").
  EXPECT_EQ(Lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
  EXPECT_EQ(Lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");            // A surrogate.
  EXPECT_EQ(Lossy("\xC0\xAF"), "\uFFFD\uFFFD");                      // Overlong.
  EXPECT_EQ(Lossy("\xE0\x80\x80"), "\uFFFD\uFFFD\uFFFD");            // Overlong.
  EXPECT_EQ(Lossy("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // Above U+10FFFF.
  EXPECT_EQ(Lossy("\xE6\x97"
                  "A"),
            "\uFFFD"
            "A");
  EXPECT_EQ(Lossy("ab\xE6\x97"), "ab\uFFFD");
  EXPECT_EQ(Lossy("\u65E5\U0001F308"), "\u65E5\U0001F308");
}

TEST(Utf8Test, NotFinalHoldsBackATruncatedCharacter) {
  std::string out;
  EXPECT_EQ(AppendLossyUtf8("ab\xE6\x97", /*final=*/false, &out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  // Invalid, not truncated: replaced at once.
  EXPECT_EQ(AppendLossyUtf8("ab\xE6\x97"
                            "A",
                            /*final=*/false, &out),
            5u);
  EXPECT_EQ(out,
            "ab\uFFFD"
            "A");

  EXPECT_EQ(ScanUtf8("\xE6\x97", 0).status, Utf8Status::kTruncated);
  EXPECT_EQ(ScanUtf8("\xE6\x97"
                     "A",
                     0)
                .status,
            Utf8Status::kInvalid);
  const Utf8Char rainbow = ScanUtf8("\U0001F308", 0);
  EXPECT_EQ(rainbow.status, Utf8Status::kValid);
  EXPECT_EQ(rainbow.len, 4u);
  EXPECT_EQ(rainbow.cp, U'\U0001F308');
  EXPECT_TRUE(IsValidUtf8("a\u00E9\u65E5\U0001F308"));
  EXPECT_FALSE(IsValidUtf8("a\xE6\x97"));
}

TEST(Utf8Test, ByteLevelTablesAreGpt2BytesToUnicode) {
  const std::vector<std::string> expected = tokenizer_testing::ByteToChar();
  const ByteLevelTables& tables = GetByteLevelTables();
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tables.byte_to_char[b], expected[b]) << b;
    EXPECT_EQ(tables.char_to_byte[CodepointAt(expected[b], 0)], b) << b;
  }
}

}  // namespace
}  // namespace loraserve::core::tokenizer_internal
