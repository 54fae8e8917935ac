// The RE2 side of HF's Oniguruma regexes (core/tokenizer/regex.h): match spans against Python's
// `re`, which has real lookahead and Unicode `\s`, on patterns both engines read the same way.
#include "core/tokenizer/regex.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace loraserve::core::tokenizer_internal {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Spans = std::vector<std::pair<size_t, size_t>>;

Spans Matches(const std::string& pattern, const std::string& text) {
  auto splitter = RegexSplitter::Create(pattern);
  EXPECT_THAT(splitter, ::loraserve::testing::IsOk()) << pattern;
  Spans out;
  if (splitter.ok()) (*splitter)->FindMatches(text, &out);
  return out;
}

// The expected [begin, end) byte spans are Python's
// [m.span() for m in re.finditer(pattern, text) if m.end() > m.start()], turned into UTF-8 byte
// offsets (on ASCII text, \p{L} and \p{N} are [A-Za-z] and [0-9] for Python).
TEST(RegexSplitterTest, WhitespaceLookaheadGivesTheLastSpaceBack) {
  const std::string gpt2 =
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
  EXPECT_THAT(
      Matches(gpt2, "Hello   world's 42!!\n\n next  "),
      ElementsAreArray(Spans{
          {0, 5}, {5, 7}, {7, 13}, {13, 15}, {15, 18}, {18, 20}, {20, 22}, {22, 27}, {27, 29}}));
  EXPECT_THAT(Matches(gpt2, " x"), ElementsAreArray(Spans{{0, 2}}));
  EXPECT_THAT(Matches(gpt2, "tab\t\tend\t"),
              ElementsAreArray(Spans{{0, 3}, {3, 4}, {4, 5}, {5, 8}, {8, 9}}));
}

TEST(RegexSplitterTest, WhitespaceIsUnicode) {
  // U+00A0, U+3000 and U+2028 are whitespace for Oniguruma (and Python), not for RE2's `\s`.
  const std::string pattern = "'s|'t| ?[A-Za-z]+| ?[0-9]+| ?[^\\sA-Za-z0-9]+|\\s+(?!\\S)|\\s+";
  EXPECT_THAT(
      Matches(pattern, "a\u00A0\u00A0b\u3000\u3000 c \u2028d"),
      ElementsAreArray(
          Spans{{0, 1}, {1, 3}, {3, 5}, {5, 6}, {6, 12}, {12, 14}, {14, 15}, {15, 18}, {18, 19}}));
}

TEST(RegexSplitterTest, LoneSpaceFallsThroughToLaterAlternatives) {
  const std::string pattern = "\\s+(?!\\S)|[a-z]+|\\s";
  EXPECT_THAT(Matches(pattern, "ab cd"), ElementsAreArray(Spans{{0, 2}, {2, 3}, {3, 5}}));
  EXPECT_THAT(Matches(pattern, "ab  cd"), ElementsAreArray(Spans{{0, 2}, {2, 3}, {3, 4}, {4, 6}}));
  EXPECT_THAT(Matches(pattern, "ab \u3000cd "),
              ElementsAreArray(Spans{{0, 2}, {2, 3}, {3, 6}, {6, 8}, {8, 9}}));
}

TEST(RegexSplitterTest, NamedGroupsAndLineAnchors) {
  // Python spells the named group (?P<w>ab); Oniguruma (?<w>ab). Anchors: Python with re.M.
  EXPECT_THAT(Matches("(?<w>ab)+|c", "ababcab"), ElementsAreArray(Spans{{0, 4}, {4, 5}, {5, 7}}));
  EXPECT_THAT(Matches("^[a-z]+|[a-z]+$", "ab cd\nef gh"),
              ElementsAreArray(Spans{{0, 2}, {3, 5}, {6, 8}, {9, 11}}));
}

TEST(TranslateRegexTest, RejectsWhatRe2CannotRun) {
  for (const char* pattern : {"a(?=b)", "a(?!b)", "(?<=a)b", "(?<!a)b", "\\s+(?!\\S)"}) {
    EXPECT_THAT(TranslateRegex(pattern),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lookaround")))
        << pattern;
  }
  EXPECT_THAT(TranslateRegex("[\\S]"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(TranslateRegex("a\\"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RegexSplitter::Create("a(b"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace loraserve::core::tokenizer_internal
