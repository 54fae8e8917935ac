// StreamingDecoder: text held back until it is decided, and streamed pieces that always add up to
// Tokenizer::Decode (hand-written tokenizers and the ../shared ones).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/tokenizer/tokenizer.h"
#include "tests/core/tokenizer/tokenizer_testing.h"
#include "tests/testing/fixtures.h"

namespace loraserve::core::tokenizer_testing {
namespace {

TEST(TokenizerTest, StreamingHoldsBackUndecidedText) {
  const auto tok = MustLoad(TinyLlamaJson());
  ASSERT_NE(tok, nullptr);
  StreamingDecoder s(*tok, /*skip_special_tokens=*/true);
  EXPECT_EQ(s.Next(1), "");    // <s> is skipped.
  EXPECT_EQ(s.Next(259), "");  // "▁": the leading space that the decoder strips.
  EXPECT_EQ(s.Next(259), " ");
  EXPECT_EQ(s.Next(233), "");  // A byte run: its text waits ...
  EXPECT_EQ(s.Next(154), "");
  EXPECT_EQ(s.Next(168), "");  // ... even when E6 97 A5 is complete: another byte could spoil it.
  EXPECT_EQ(s.Next(263), "\u65E5 a");
  EXPECT_EQ(s.Next(233), "");
  EXPECT_EQ(s.Finish(), "\uFFFD");  // The end decides: a lone E6 byte.
  EXPECT_EQ(tok->Decode({1, 259, 259, 233, 154, 168, 263, 233}, true), " \u65E5 a\uFFFD");

  // ByteLevel: an incomplete UTF-8 sequence is held until it completes.
  const auto l3 = MustLoad(TinyLlama3Json());
  ASSERT_NE(l3, nullptr);
  StreamingDecoder b(*l3, /*skip_special_tokens=*/false);
  EXPECT_EQ(b.Next(271), "<|begin_of_text|>");
  EXPECT_EQ(b.Next(264), "Hello");
  EXPECT_EQ(b.Next(240), "");
  EXPECT_EQ(b.Next(159), "");
  EXPECT_EQ(b.Next(140), "");
  EXPECT_EQ(b.Next(136), "\U0001F308");
  EXPECT_EQ(b.Next(230), "");
  EXPECT_EQ(b.Next(33), "\uFFFD!");
  EXPECT_EQ(b.Finish(), "");
}

TEST(TokenizerTest, RandomIdsStreamLikeDecode) {
  for (const Json& j : {TinyLlamaJson(), TinyLlama3Json(), TinyMetaspaceJson()}) {
    const auto tok = MustLoad(j);
    ASSERT_NE(tok, nullptr);
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> pick(-1, tok->vocab_size());
    for (int round = 0; round < 300; ++round) {
      std::vector<int32_t> ids(rng() % 12);
      for (int32_t& id : ids) id = pick(rng);
      for (const bool skip : {false, true}) {
        const std::string full = tok->Decode(ids, skip);
        EXPECT_TRUE(IsValidUtf8(full));
        EXPECT_EQ(StreamDecode(*tok, ids, skip), full);
      }
    }
  }
}

TEST(TokenizerGpt2Test, RandomIdsStreamLikeDecode) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Gpt2(), nullptr);
  const Tokenizer& tok = *Gpt2();
  std::mt19937 rng(99);
  // Mostly single-byte tokens (ids < 256), which split multi-byte characters.
  std::uniform_int_distribution<int32_t> any(0, 50256), byte(0, 255);
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids(rng() % 16);
    for (int32_t& id : ids) id = rng() % 4 == 0 ? any(rng) : byte(rng);
    const std::string full = tok.Decode(ids, false);
    EXPECT_TRUE(IsValidUtf8(full));
    EXPECT_EQ(StreamDecode(tok, ids, false), full);
  }
}

TEST(TokenizerStoriesTest, RandomIdsStreamLikeDecode) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_NE(Stories(), nullptr);
  const Tokenizer& tok = *Stories();
  std::mt19937 rng(7);
  // Byte-fallback tokens (3..258) and ordinary pieces, with the specials.
  std::uniform_int_distribution<int32_t> any(0, 511), byte(3 + 0x80, 3 + 0xF4);
  for (int round = 0; round < 500; ++round) {
    std::vector<int32_t> ids(rng() % 12);
    for (int32_t& id : ids) id = rng() % 2 == 0 ? any(rng) : byte(rng);
    for (const bool skip : {false, true}) {
      const std::string full = tok.Decode(ids, skip);
      EXPECT_TRUE(IsValidUtf8(full));
      EXPECT_EQ(StreamDecode(tok, ids, skip), full);
    }
  }
}

}  // namespace
}  // namespace loraserve::core::tokenizer_testing
