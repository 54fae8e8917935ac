// Tokenizer end to end on hand-written tokenizer.json files (Llama-2, Llama-3 and Metaspace
// layouts): encoding, decoding and metadata as HF `tokenizers` gives them, and load errors.
#include "core/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "tests/core/tokenizer/tokenizer_testing.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core::tokenizer_testing {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(TokenizerTest, TinyLlamaEncodesAndDecodesLikeHf) {
  const auto tok = MustLoad(TinyLlamaJson());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->vocab_size(), 270);
  EXPECT_EQ(tok->TokenToId("\u2581ab"), 265);
  EXPECT_EQ(tok->IdToToken(265), "\u2581ab");
  EXPECT_EQ(tok->TokenToId("<extra>"), 269);
  EXPECT_EQ(tok->TokenToId("nope"), std::nullopt);
  EXPECT_EQ(tok->IdToToken(100000), std::nullopt);
  EXPECT_EQ(tok->IdToToken(-1), std::nullopt);
  EXPECT_TRUE(tok->IsSpecial(1));
  EXPECT_FALSE(tok->IsSpecial(269));  // A non-special added token.
  EXPECT_FALSE(tok->IsSpecial(265));

  // Texts without special-token text: the same either way.
  const std::vector<Case> plain = {
      {"", {1}, "<s>"},
      {"ab c", {1, 265, 267}, "<s> ab c"},
      {"abc", {1, 265, 262}, "<s> abc"},
      {" a", {1, 259, 263}, "<s>  a"},
      {"a\u00E9x", {1, 263, 268, 123}, "<s> a\u00E9x"},  // x: byte fallback <0x78>.
      {"\u65E5", {1, 259, 233, 154, 168}, "<s> \u65E5"},
      // A non-special added token is always split out; the text after it gets its own "▁".
      {"a<extra>b", {1, 263, 269, 259, 261}, "<s> a<extra> b"},
      {"  ", {1, 259, 259, 259}, "<s>   "},
      {"a  b", {1, 263, 259, 259, 261}, "<s> a  b"},
      {"xy\u00E9", {1, 259, 123, 124, 268}, "<s> xy\u00E9"},
  };
  CheckCases(*tok, plain, {});
  CheckCases(*tok, plain, ParseSpecial());
  // Special-token text: plain characters by default (HF ids with the special added tokens
  // removed from the file) ...
  CheckCases(*tok,
             {
                 {"a<s>b", {1, 263, 63, 118, 65, 261}, "<s> a<s>b"},
                 {"<s>", {1, 259, 63, 118, 65}, "<s> <s>"},
                 {" <s> ", {1, 259, 259, 63, 118, 65, 259}, "<s>  <s> "},
             },
             {});
  // ... and the special token with parse_special (HF's default).
  CheckCases(*tok,
             {
                 {"a<s>b", {1, 263, 1, 259, 261}, "<s> a<s> b"},
                 {"<s>", {1, 1}, "<s><s>"},
                 {" <s> ", {1, 259, 259, 1, 259, 259}, "<s>  <s>  "},
             },
             ParseSpecial());
  EXPECT_EQ(tok->Encode("ab", NoSpecialTokens()), (std::vector<int32_t>{265}));

  // Decoding: one leading space is stripped; an invalid byte run is one U+FFFD per byte.
  EXPECT_EQ(tok->Decode({1, 265, 267}, false), "<s> ab c");
  EXPECT_EQ(tok->Decode({1, 265, 267}, true), "ab c");
  EXPECT_EQ(tok->Decode({259, 259, 263}, false), "  a");
  EXPECT_EQ(tok->Decode({1, 233, 154}, false), "<s>\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({1, 233, 154}, true), "\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({233, 154, 168, 233}, true), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({233, 154, 168, 263}, true), "\u65E5 a");
  EXPECT_EQ(tok->Decode({0, 5000, 263}, false), "<unk> a");  // Unknown ids are skipped.
  EXPECT_EQ(tok->Decode({0, 5000, -1, 263}, true), "a");
  EXPECT_EQ(tok->Decode({1, 259, 233, 154, 168, 263}, false), "<s> \u65E5 a");
  EXPECT_EQ(tok->Decode({1, 259, 233, 154, 168, 263}, true), "\u65E5 a");
  EXPECT_EQ(tok->Decode({259}, false), "");
  EXPECT_EQ(tok->Decode({1, 259}, false), "<s> ");
  EXPECT_EQ(tok->Decode({1, 259}, true), "");
  EXPECT_EQ(tok->Decode({2, 259, 263}, false), "</s>  a");
  EXPECT_EQ(tok->Decode({2, 259, 263}, true), " a");
  EXPECT_EQ(tok->Decode({122, 259, 122, 3}, false), std::string("w w\0", 4));
}

TEST(TokenizerTest, TinyLlama3SplitRegexAndByteLevel) {
  const auto tok = MustLoad(TinyLlama3Json());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->TokenToId("<|begin_of_text|>"), 271);
  EXPECT_EQ(tok->TokenToId("<|eot_id|>"), 272);
  EXPECT_EQ(tok->bos_id(), 271);
  EXPECT_EQ(tok->eos_id(), -1);  // Llama-3's <|eot_id|> comes from generation_config.json.
  ASSERT_OK_AND_ASSIGN(auto with_eos, Tokenizer::FromJson(TinyLlama3Json(), "t", EosOverride(272)));
  EXPECT_EQ(with_eos->eos_id(), 272);
  EXPECT_EQ(tok->vocab_size(), 273);

  // Case-insensitive contractions, \p{N}{1,3}, newline runs, Unicode whitespace, ignore_merges.
  const std::vector<Case> cases = {
      {"Hello world", {271, 264, 260}, "<|begin_of_text|>Hello world"},
      {"Hello world's 12345 xyz",
       {271, 264, 260, 265, 32, 267, 52, 53, 32, 120, 121, 122},
       "<|begin_of_text|>Hello world's 12345 xyz"},
      {"IT'S it's We'LL",
       {271, 73, 84, 39, 83, 32, 105, 116, 265, 32, 87, 101, 39, 76, 76},
       "<|begin_of_text|>IT'S it's We'LL"},
      {"a  \n\n b", {271, 97, 269, 268, 32, 98}, "<|begin_of_text|>a  \n\n b"},
      {"  x", {271, 32, 32, 120}, "<|begin_of_text|>  x"},
      {"\t\tHi", {271, 9, 9, 72, 105}, "<|begin_of_text|>\t\tHi"},
      {"tab\t", {271, 116, 97, 98, 9}, "<|begin_of_text|>tab\t"},
      {"end  ", {271, 101, 110, 100, 269}, "<|begin_of_text|>end  "},
      {"\u65E5\u672C\u8A9E \U0001F3F3\uFE0F\u200D\U0001F308!!\n",
       {271, 230, 151, 165, 230, 156, 172, 232, 170, 158, 32,  240, 159, 143,
        179, 239, 184, 143, 226, 128, 141, 240, 159, 140, 136, 33,  33,  10},
       "<|begin_of_text|>\u65E5\u672C\u8A9E \U0001F3F3\uFE0F\u200D\U0001F308!!\n"},
      {"1234567", {271, 267, 52, 53, 54, 55}, "<|begin_of_text|>1234567"},
      {"'S 'Ll 'd", {271, 39, 83, 32, 39, 76, 108, 32, 39, 100}, "<|begin_of_text|>'S 'Ll 'd"},
      {"Hello\r\n\r\nworld",
       {271, 264, 13, 10, 13, 10, 119, 257, 259},
       "<|begin_of_text|>Hello\r\n\r\nworld"},
      {"!!!\n\n\nnext",
       {271, 33, 33, 33, 268, 10, 110, 101, 120, 116},
       "<|begin_of_text|>!!!\n\n\nnext"},
      {" \u00A0x\u3000y",
       {271, 32, 194, 160, 120, 227, 128, 128, 121},
       "<|begin_of_text|> \u00A0x\u3000y"},
      {"xyz", {271, 270}, "<|begin_of_text|>xyz"},
      {" xyz", {271, 32, 120, 121, 122}, "<|begin_of_text|> xyz"},
      {"e\u0301t\u00E9", {271, 101, 204, 129, 116, 195, 169}, "<|begin_of_text|>e\u0301t\u00E9"},
      {"a\u2028b", {271, 97, 226, 128, 168, 98}, "<|begin_of_text|>a\u2028b"},
      {"$$$ 42.5%", {271, 36, 36, 36, 32, 52, 50, 46, 53, 37}, "<|begin_of_text|>$$$ 42.5%"},
  };
  CheckCases(*tok, cases, {});
  CheckCases(*tok, cases, ParseSpecial());
  CheckCases(*tok, {{"x<|eot_id|>y", {271, 120, 272, 121}, "<|begin_of_text|>x<|eot_id|>y"}},
             ParseSpecial());
  CheckCases(*tok,
             {{"x<|eot_id|>y",
               {271, 120, 60, 124, 101, 111, 116, 95, 105, 100, 124, 62, 121},
               "<|begin_of_text|>x<|eot_id|>y"}},
             {});

  // ByteLevel decoding: lossy UTF-8 over all bytes (one U+FFFD per maximal invalid subpart).
  EXPECT_EQ(tok->Decode({256, 257}, false), " wor");
  EXPECT_EQ(tok->Decode({230, 151}, false), "\uFFFD");
  EXPECT_EQ(tok->Decode({230, 151, 165}, false), "\u65E5");
  EXPECT_EQ(tok->Decode({230, 33}, false), "\uFFFD!");
  EXPECT_EQ(tok->Decode({240, 159, 143, 33}, false), "\uFFFD!");
  EXPECT_EQ(tok->Decode({192, 175, 33}, false), "\uFFFD\uFFFD!");
  EXPECT_EQ(tok->Decode({237, 160, 128}, false), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({244, 144, 128, 128}, false), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({271, 230, 272, 151, 165}, false),
            "<|begin_of_text|>\uFFFD<|eot_id|>\uFFFD\uFFFD");
  EXPECT_EQ(tok->Decode({271, 230, 272, 151, 165}, true), "\u65E5");
  EXPECT_EQ(tok->Decode({999}, false), "");
}

TEST(TokenizerTest, TinyMetaspace) {
  const auto tok = MustLoad(TinyMetaspaceJson());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 6);  // A special "<s>" added token.
  EXPECT_EQ(tok->eos_id(), -1);
  const std::vector<Case> plain = {
      {"a b", {4, 5}, "a b"},
      {"  a", {1, 4}, " a"},
      {"ab  b", {4, 3, 1, 5}, "ab  b"},
      {"xa", {1, 0, 2}, "<unk>a"},
      {"a\u2581b", {4, 5}, "a b"},
      {"", {}, ""},
      {" ", {1}, ""},
  };
  CheckCases(*tok, plain, {});
  CheckCases(*tok, plain, ParseSpecial());
  // prepend_scheme "first": only the text at the very start of the input gets a "▁".
  CheckCases(*tok,
             {
                 {"<s>a b", {6, 2, 5}, "<s>a b"},
                 {"b<s>", {5, 6}, "b<s>"},
                 {"a <s> b", {4, 1, 6, 5}, "a <s> b"},
             },
             ParseSpecial());
  CheckCases(*tok, {{"<s>a b", {1, 0, 2, 5}, "<unk>a b"}, {"a <s> b", {4, 1, 0, 5}, "a <unk> b"}},
             {});
  // The Metaspace decoder drops every "▁" of the first token.
  EXPECT_EQ(tok->Decode({1, 1, 2}, false), " a");
  EXPECT_EQ(tok->Decode({6, 4}, false), "<s> a");
  EXPECT_EQ(tok->Decode({6, 4}, true), "a");
  EXPECT_EQ(tok->Decode({0, 0}, false), "<unk><unk>");
  EXPECT_EQ(tok->Decode({0, 0}, true), "");
  EXPECT_EQ(tok->Decode({1, 6, 1, 4}, false), "<s>  a");
  EXPECT_EQ(tok->Decode({1, 6, 1, 4}, true), "  a");
}

TEST(TokenizerTest, InvalidUtf8InputIsReplaced) {
  const auto tok = MustLoad(TinyLlamaJson());
  ASSERT_NE(tok, nullptr);
  // "a", then a lone continuation byte, then a truncated 3-byte sequence: two U+FFFD.
  EXPECT_EQ(tok->Encode("a\x80\xE6\x97", NoSpecialTokens()),
            tok->Encode("a\uFFFD\uFFFD", NoSpecialTokens()));
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST(TokenizerTest, LoadErrors) {
  const std::string dir = testing::MakeTempDir();
  EXPECT_THAT(Tokenizer::FromFile(dir + "/missing.json"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(WriteFileAtomically(dir + "/bad.json", "{\"model\": "));
  EXPECT_THAT(Tokenizer::FromFile(dir + "/bad.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid JSON")));

  Json j = TinyLlamaJson();
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unsupported model type \"WordPiece\"")));
  j = TinyLlamaJson();
  j.erase("model");
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model")));
  j = TinyLlamaJson();
  j["normalizer"] = Json{{"type", "NFKC"}};
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("normalizer type \"NFKC\"")));
  j = TinyLlamaJson();
  j["model"]["merges"].push_back("a zzz");
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                         HasSubstr("\"zzz\" is not in the vocab")));
  j = TinyLlamaJson();
  j["model"]["vocab"] = "oops";
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"), StatusIs(absl::StatusCode::kInvalidArgument));
  j = TinyLlama3Json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "a(?=b)";
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lookaround")));
  j = TinyLlama3Json();
  j["decoder"] = Json{{"type", "CTC"}};
  EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("decoder type \"CTC\"")));
  EXPECT_THAT(Tokenizer::FromJson(Json::array(), "x.json"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(TokenizerTest, SequenceWithoutItsListIsAnError) {
  const std::vector<std::pair<std::string, std::string>> stages = {
      {"normalizer", "normalizers"},
      {"pre_tokenizer", "pretokenizers"},
      {"post_processor", "processors"},
      {"decoder", "decoders"}};
  for (const auto& [stage, list] : stages) {
    Json j = TinyLlamaJson();
    j[stage] = Json{{"type", "Sequence"}};
    EXPECT_THAT(Tokenizer::FromJson(j, "x.json"),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("x.json: " + stage + " Sequence: missing \"" + list + "\"")));
  }
}

}  // namespace
}  // namespace loraserve::core::tokenizer_testing
