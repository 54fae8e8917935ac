// The BPE merge (core/tokenizer/bpe_model.h) on vocabularies small enough to merge by hand: the
// lowest-ranked pair merges first, and of equal pairs the leftmost.
#include "core/tokenizer/bpe_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer_json.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core::tokenizer_internal {
namespace {

using ::testing::ElementsAre;

std::vector<int32_t> Tokenize(const Json& merges, std::string_view word) {
  const Json model = {
      {"type", "BPE"},
      {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}}},
      {"merges", merges}};
  BpeModel m;
  EXPECT_OK(ParseBpeModel(JsonReader("test"), model, &m));
  std::vector<int32_t> ids;
  m.Tokenize(word, &ids);
  return ids;
}

TEST(BpeModelTest, LowestRankMergesFirst) {
  // a b -> ab, then ab c -> abc.
  EXPECT_THAT(Tokenize(Json::array({"a b", "b c", "ab c"}), "abc"), ElementsAre(5));
  // b c -> bc first; a bc is no merge.
  EXPECT_THAT(Tokenize(Json::array({"b c", "a b", "ab c"}), "abc"), ElementsAre(0, 4));
  EXPECT_THAT(Tokenize(Json::array(), "abc"), ElementsAre(0, 1, 2));
}

TEST(BpeModelTest, LeftmostOfEqualPairsMergesFirst) {
  EXPECT_THAT(Tokenize(Json::array({"a a"}), "aaa"), ElementsAre(6, 0));
  EXPECT_THAT(Tokenize(Json::array({"a a"}), "aaaa"), ElementsAre(6, 6));
}

}  // namespace
}  // namespace loraserve::core::tokenizer_internal
