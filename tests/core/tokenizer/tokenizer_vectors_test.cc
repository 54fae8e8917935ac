// Tokenizer against every reference vector of the ../shared fixtures (stories260K, a Llama-2
// style sentencepiece tokenizer, and GPT-2), and concurrent use.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer.h"
#include "tests/core/tokenizer/tokenizer_testing.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core::tokenizer_testing {
namespace {

using ::testing::ElementsAre;

TEST(TokenizerStoriesTest, Metadata) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Stories(), nullptr);
  const Tokenizer& tok = *Stories();
  const Json v = StoriesVectors();
  EXPECT_EQ(tok.bos_id(), v["bos_id"].get<int>());
  EXPECT_EQ(tok.eos_id(), v["eos_id"].get<int>());
  EXPECT_EQ(tok.unk_id(), v["unk_id"].get<int>());
  EXPECT_EQ(tok.vocab_size(), 512);
}

TEST(TokenizerStoriesTest, EncodeVectors) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Stories(), nullptr);
  const Tokenizer& tok = *Stories();
  const Json v = StoriesVectors();
  ASSERT_EQ(v["encode"].size(), 200u);
  for (const Json& c : v["encode"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = IdsOf(c["ids"]);
    EXPECT_EQ(tok.Encode(text), ids) << "text: " << text;
    // These texts hold no special-token text, so parsing it changes nothing.
    EXPECT_EQ(tok.Encode(text, ParseSpecial()), ids) << "text: " << text;
    std::vector<std::string> tokens;
    for (const int32_t id : ids) tokens.push_back(tok.IdToToken(id).value_or("?"));
    EXPECT_EQ(tokens, c["tokens"].get<std::vector<std::string>>()) << "text: " << text;
    EXPECT_EQ(tok.Decode(ids, true), c["decoded"].get<std::string>()) << "text: " << text;
    EXPECT_EQ(tok.Decode(ids, false), c["decoded_keep_special"].get<std::string>()) << text;
    EXPECT_EQ(StreamDecode(tok, ids, true), c["decoded"].get<std::string>()) << text;
    EXPECT_EQ(StreamDecode(tok, ids, false), c["decoded_keep_special"].get<std::string>()) << text;
  }
}

TEST(TokenizerStoriesTest, DecodeVectors) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Stories(), nullptr);
  const Tokenizer& tok = *Stories();
  const Json v = StoriesVectors();
  ASSERT_FALSE(v["decode"].empty());
  for (const Json& c : v["decode"]) {
    const std::vector<int32_t> ids = IdsOf(c["ids"]);
    const std::string decoded = c["decoded"], keep = c["decoded_keep_special"];
    EXPECT_EQ(tok.Decode(ids, true), decoded)
        << c["ids"].dump() << " got " << Hex(tok.Decode(ids, true));
    EXPECT_EQ(tok.Decode(ids, false), keep) << c["ids"].dump();
    EXPECT_EQ(StreamDecode(tok, ids, true), decoded) << c["ids"].dump();
    EXPECT_EQ(StreamDecode(tok, ids, false), keep) << c["ids"].dump();
  }
}

TEST(TokenizerStoriesTest, SpecialTokensInText) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Stories(), nullptr);
  const Tokenizer& tok = *Stories();
  const Json v = StoriesVectors();
  const Json& vectors = v["hf_only_special_tokens_in_text"]["vectors"];
  ASSERT_FALSE(vectors.empty());
  for (const Json& c : vectors) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = IdsOf(c["ids"]);
    // HF's default is to parse special tokens in text: that is parse_special=true here.
    EXPECT_EQ(tok.Encode(text, ParseSpecial()), ids) << "text: " << text;
    EXPECT_EQ(tok.Decode(ids, true), c["decoded"].get<std::string>()) << text;
    EXPECT_EQ(tok.Decode(ids, false), c["decoded_keep_special"].get<std::string>()) << text;
    EXPECT_EQ(StreamDecode(tok, ids, true), c["decoded"].get<std::string>()) << text;
    EXPECT_EQ(StreamDecode(tok, ids, false), c["decoded_keep_special"].get<std::string>()) << text;
    // By default the special text is plain characters: no special id past the BOS, and it
    // decodes back to the text.
    const std::vector<int32_t> plain = tok.Encode(text);
    for (size_t i = 1; i < plain.size(); ++i) {
      EXPECT_FALSE(tok.IsSpecial(plain[i])) << "text: " << text;
    }
    if (text.find("\u2581") == std::string::npos) {
      // Without special tokens and U+2581, HF and llama2.c agree (see the vector file's note).
      EXPECT_EQ(plain, IdsOf(c["llama2c_encode_ids"])) << "text: " << text;
      EXPECT_EQ(tok.Decode(plain, true), text);
    }
  }
}

TEST(TokenizerGpt2Test, Metadata) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Gpt2(), nullptr);
  const Tokenizer& tok = *Gpt2();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_EQ(tok.eos_id(), 50256);
  EXPECT_EQ(tok.unk_id(), -1);
  EXPECT_EQ(tok.Encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok.Encode("hello <|endoftext|>", ParseSpecial()),
            (std::vector<int32_t>{31373, 220, 50256}));
  // `\s+(?!\S)`: a whitespace run before a word gives its last character back.
  EXPECT_EQ(tok.Encode("hello   world"), (std::vector<int32_t>{31373, 220, 220, 995}));
  EXPECT_EQ(tok.Encode("hello\n\nworld"), (std::vector<int32_t>{31373, 198, 198, 6894}));
  EXPECT_EQ(tok.Encode("\n\n"), (std::vector<int32_t>{628}));
  EXPECT_EQ(tok.Encode("IT'S"), (std::vector<int32_t>{2043, 6, 50}));
  // Not parsed by default: the plain-text encoding of OpenAI's encoder.py.
  EXPECT_EQ(tok.Encode("<|endoftext|>"), (std::vector<int32_t>{27, 91, 437, 1659, 5239, 91, 29}));
}

TEST(TokenizerGpt2Test, AllVectors) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Gpt2(), nullptr);
  const Tokenizer& tok = *Gpt2();
  const Json vectors = Gpt2Vectors();
  ASSERT_EQ(vectors.size(), 300u);
  int with_special = 0;
  for (const Json& c : vectors) {
    const std::string text = c["text"];
    const std::vector<int32_t> ids = IdsOf(c["ids"]);
    const std::string decoded = c["decoded"];
    EXPECT_EQ(tok.Encode(text, ParseSpecial()), ids) << "text: " << text;
    EXPECT_EQ(tok.Decode(ids, false), decoded) << "text: " << text;
    EXPECT_EQ(StreamDecode(tok, ids, false), decoded) << "text: " << text;
    std::vector<int32_t> without;
    for (const int32_t id : ids) {
      if (id != 50256) without.push_back(id);
    }
    EXPECT_EQ(tok.Decode(ids, true), tok.Decode(without, false)) << "text: " << text;
    EXPECT_EQ(StreamDecode(tok, ids, true), tok.Decode(without, false)) << "text: " << text;
    const std::vector<int32_t> plain = tok.Encode(text);
    if (without.size() == ids.size()) {
      EXPECT_EQ(plain, ids) << "text: " << text;
    } else {
      ++with_special;
      EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0) << "text: " << text;
      EXPECT_EQ(tok.Decode(plain, false), text);
    }
  }
  EXPECT_EQ(with_special, 32);  // As the fixture's README counts.
}

// The tokenizer is shared by all request threads: concurrent use must give the same results (run
// under TSAN to check for races).
TEST(TokenizerGpt2Test, ConcurrentUse) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Gpt2(), nullptr);
  const Tokenizer& tok = *Gpt2();
  const Json vectors = Gpt2Vectors();
  ASSERT_FALSE(vectors.empty());
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < vectors.size(); i += 2) {
        const std::vector<int32_t> ids = IdsOf(vectors[i]["ids"]);
        if (tok.Encode(vectors[i]["text"].get<std::string>(), ParseSpecial()) != ids ||
            tok.Decode(ids) != vectors[i]["decoded"].get<std::string>()) {
          ++failures[t];
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(failures, ElementsAre(0, 0, 0, 0));
}

}  // namespace
}  // namespace loraserve::core::tokenizer_testing
