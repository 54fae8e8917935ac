#include "core/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Helpers

// Strict UTF-8 check, written independently of the tokenizer's own.
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// Streams `ids` through a StreamingDecoder; every chunk must be valid UTF-8.
std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  StreamingDecoder stream(tok, skip_special);
  std::string out;
  for (const int32_t id : ids) {
    const std::string chunk = stream.Next(id);
    EXPECT_TRUE(IsValidUtf8(chunk)) << "invalid UTF-8 chunk after id " << id;
    out += chunk;
  }
  const std::string tail = stream.Finish();
  EXPECT_TRUE(IsValidUtf8(tail));
  return out + tail;
}

EncodeOptions ParseSpecial() {
  EncodeOptions o;
  o.parse_special = true;
  return o;
}

EncodeOptions NoSpecialTokens() {
  EncodeOptions o;
  o.add_special_tokens = false;
  return o;
}

TokenizerOptions EosOverride(int32_t eos) {
  TokenizerOptions o;
  o.eos_id = eos;
  return o;
}

std::vector<int32_t> IdsOf(const Json& v) { return v.get<std::vector<int32_t>>(); }

std::string Hex(const std::string& s) {
  std::string out;
  char buf[4];
  for (const char c : s) {
    std::snprintf(buf, sizeof(buf), "%02X ", static_cast<uint8_t>(c));
    out += buf;
  }
  return out;
}

// GPT-2's bytes_to_unicode(), to build byte-level vocabularies in tests.
std::vector<std::string> ByteToChar() {
  std::vector<std::string> table(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const int cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    table[b] = s;
  }
  return table;
}

Json AddedToken(int id, const std::string& content, bool special) {
  return Json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
              {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// ---------------------------------------------------------------------------------------------
// Hand-written tokenizers (no ../shared needed). Their expected ids and text were produced with
// Hugging Face `tokenizers` 0.23.2 (npm, Rust core) on the very same JSON.

// Llama-2 / sentencepiece layout: Prepend + Replace normalizer, no pre-tokenizer, byte fallback,
// `<s> $A` template, Replace/ByteFallback/Fuse/Strip decoder.
Json TinyLlamaJson() {
  Json vocab = Json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  const std::vector<std::string> pieces = {"\u2581",   "a",  "b",       "c",      "\u2581a", "ab",
                                           "\u2581ab", "bc", "\u2581c", "\u00e9", "<extra>"};
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = 259 + static_cast<int>(i);
  Json j;
  j["version"] = "1.0";
  j["added_tokens"] = Json::array({AddedToken(0, "<unk>", true), AddedToken(1, "<s>", true),
                                   AddedToken(2, "</s>", true), AddedToken(269, "<extra>", false)});
  j["normalizer"] = Json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})");
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "<s>", "type_id": 1}},
               {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})");
  j["decoder"] = Json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})");
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", "<unk>"},
                {"fuse_unk", true},
                {"byte_fallback", true},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", Json::array({"\u2581 a", "a b", "\u2581a b", "b c", "\u2581 c"})}};
  return j;
}

// Llama-3 layout: Split with the Llama-3 regex + ByteLevel(use_regex=false), ignore_merges, merges
// as pairs, `<|begin_of_text|> $A` inside a post-processor Sequence, ByteLevel decoder.
Json TinyLlama3Json() {
  const std::vector<std::string> bytes = ByteToChar();
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"Ġ", "w"}, {"o", "r"},  {"Ġw", "or"}, {"l", "d"},    {"Ġwor", "ld"},
      {"H", "e"}, {"l", "l"},  {"He", "ll"}, {"Hell", "o"}, {"'", "s"},
      {"1", "2"}, {"12", "3"}, {"Ċ", "Ċ"},   {"Ġ", "Ġ"}};
  int next = 256;
  Json merge_list = Json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back(Json::array({a, b}));
  }
  vocab["xyz"] = next++;  // Reachable only through ignore_merges.
  const int bot = next++, eot = next++;
  Json j;
  j["version"] = "1.0";
  j["added_tokens"] = Json::array(
      {AddedToken(bot, "<|begin_of_text|>", true), AddedToken(eot, "<|eot_id|>", true)});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array({{{"type", "Split"},
                     {"pattern",
                      {{"Regex",
                        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                     {"behavior", "Isolated"},
                     {"invert", false}},
                    {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", false}}})}};
  j["post_processor"] =
      Json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}}],
       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [)" +
                  std::to_string(bot) + R"(], "tokens": ["<|begin_of_text|>"]}}}]})");
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", true},
                {"vocab", vocab},
                {"merges", merge_list}};
  return j;
}

// Newer sentencepiece layout: Metaspace pre-tokenizer (prepend_scheme "first") and decoder, no
// post-processor, unk without byte fallback.
Json TinyMetaspaceJson() {
  Json j;
  j["version"] = "1.0";
  j["added_tokens"] = Json::array({AddedToken(0, "<unk>", true), AddedToken(6, "<s>", true)});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = Json::parse(
      R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true})");
  j["post_processor"] = nullptr;
  j["decoder"] = Json::parse(
      R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true})");
  j["model"] = Json::parse(R"({"type": "BPE", "dropout": null, "unk_token": "<unk>",
      "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
      "vocab": {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "▁a": 4, "▁b": 5, "<s>": 6},
      "merges": [["▁", "a"], ["▁", "b"]]})");
  return j;
}

std::unique_ptr<Tokenizer> MustLoad(const Json& j) {
  auto t = Tokenizer::FromJson(j, "test tokenizer.json");
  EXPECT_THAT(t, ::loraserve::testing::IsOk());
  return t.ok() ? std::move(t).value() : nullptr;
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;  // Decode(ids, skip_special_tokens=false).
};

void CheckCases(const Tokenizer& tok, const std::vector<Case>& cases, const EncodeOptions& opts) {
  for (const Case& c : cases) {
    EXPECT_EQ(tok.Encode(c.text, opts), c.ids) << "text: \"" << c.text << "\"";
    EXPECT_EQ(tok.Decode(c.ids, false), c.decoded) << "text: \"" << c.text << "\"";
    EXPECT_EQ(StreamDecode(tok, c.ids, false), c.decoded) << "text: \"" << c.text << "\"";
    EXPECT_EQ(StreamDecode(tok, c.ids, true), tok.Decode(c.ids, true)) << c.text;
  }
}

// ---------------------------------------------------------------------------------------------
// Tests on hand-written tokenizers.

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

// ---------------------------------------------------------------------------------------------
// Shared fixtures: every reference vector.

// Loaded once for all tests; nullptr (after a test failure) if it does not load.
const Tokenizer* Stories() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile(testing::SharedPath("fixtures/models/stories260K/tokenizer.json"));
    EXPECT_THAT(t, ::loraserve::testing::IsOk());
    return t.ok() ? std::move(t).value().release() : nullptr;
  }();
  return tok;
}

Json StoriesVectors() {
  auto j = ReadJsonFile(testing::SharedPath("fixtures/models/stories260K/tokenizer_vectors.json"));
  EXPECT_THAT(j, ::loraserve::testing::IsOk());
  return j.ok() ? *j : Json::object();
}

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

const Tokenizer* Gpt2() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile(testing::SharedPath("fixtures/tokenizers/gpt2/tokenizer.json"));
    EXPECT_THAT(t, ::loraserve::testing::IsOk());
    return t.ok() ? std::move(t).value().release() : nullptr;
  }();
  return tok;
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
  auto vj = ReadJsonFile(testing::SharedPath("fixtures/tokenizers/gpt2/tokenizer_vectors.json"));
  ASSERT_OK(vj);
  const Json& vectors = (*vj)["vectors"];
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
  auto vj = ReadJsonFile(testing::SharedPath("fixtures/tokenizers/gpt2/tokenizer_vectors.json"));
  ASSERT_OK(vj);
  const Json& vectors = (*vj)["vectors"];
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
}  // namespace loraserve::core
