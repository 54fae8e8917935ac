// Splitting pieces (core/tokenizer/pre_tokenizer.h): each split behavior against the table in HF
// `tokenizers`' SplitDelimiterBehavior documentation (splitting "the-final--countdown" on '-').
#include "core/tokenizer/pre_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace loraserve::core::tokenizer_internal {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Split(SplitBehavior behavior) {
  // The matches of "-" in "the-final--countdown".
  const std::vector<std::pair<size_t, size_t>> dashes = {{3, 4}, {9, 10}, {10, 11}};
  std::vector<Piece> out;
  SplitPiece({"the-final--countdown", /*at_start=*/true}, dashes, behavior, /*invert=*/false, &out);
  std::vector<std::string> texts;
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].at_start, i == 0) << "only the first piece starts the input";
    texts.push_back(out[i].text);
  }
  return texts;
}

TEST(SplitPieceTest, BehaviorsMatchHf) {
  EXPECT_THAT(Split(SplitBehavior::kRemoved), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kIsolated),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kMergedWithPrevious),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kMergedWithNext),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(Split(SplitBehavior::kContiguous),
              ElementsAre("the", "-", "final", "--", "countdown"));
}

}  // namespace
}  // namespace loraserve::core::tokenizer_internal
