#include "tests/core/tokenizer/tokenizer_testing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <utility>

#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core::tokenizer_testing {
namespace {

// Loads a tokenizer of ../shared; nullptr (after a test failure) if it does not load. The caller
// keeps it for the whole test run.
const Tokenizer* LoadShared(const std::string& relative) {
  auto t = Tokenizer::FromFile(testing::SharedPath(relative));
  EXPECT_THAT(t, ::loraserve::testing::IsOk());
  return t.ok() ? std::move(t).value().release() : nullptr;
}

// A TemplateProcessing post-processor that puts the special token `bos` (id `id`) first: `bos $A`
// for one sequence, `bos $A bos $B` for a pair.
Json BosTemplate(const std::string& bos, int id) {
  const auto special = [&bos](int type_id) {
    return Json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
  };
  const auto sequence = [](const char* name, int type_id) {
    return Json{{"Sequence", {{"id", name}, {"type_id", type_id}}}};
  };
  Json j;
  j["type"] = "TemplateProcessing";
  j["single"] = Json::array({special(0), sequence("A", 0)});
  j["pair"] = Json::array({special(0), sequence("A", 0), special(1), sequence("B", 1)});
  j["special_tokens"][bos] = {
      {"id", bos}, {"ids", Json::array({id})}, {"tokens", Json::array({bos})}};
  return j;
}

}  // namespace

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
  j["post_processor"] = BosTemplate("<s>", 1);
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
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors", Json::array({Json::parse(R"({"type": "ByteLevel", "add_prefix_space": true,
                                    "trim_offsets": false, "use_regex": true})"),
                                  BosTemplate("<|begin_of_text|>", bot)})}};
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

void CheckCases(const Tokenizer& tok, const std::vector<Case>& cases, const EncodeOptions& opts) {
  for (const Case& c : cases) {
    EXPECT_EQ(tok.Encode(c.text, opts), c.ids) << "text: \"" << c.text << "\"";
    EXPECT_EQ(tok.Decode(c.ids, false), c.decoded) << "text: \"" << c.text << "\"";
    EXPECT_EQ(StreamDecode(tok, c.ids, false), c.decoded) << "text: \"" << c.text << "\"";
    EXPECT_EQ(StreamDecode(tok, c.ids, true), tok.Decode(c.ids, true)) << c.text;
  }
}

const Tokenizer* Stories() {
  static const Tokenizer* tok = LoadShared("fixtures/models/stories260K/tokenizer.json");
  return tok;
}

const Tokenizer* Gpt2() {
  static const Tokenizer* tok = LoadShared("fixtures/tokenizers/gpt2/tokenizer.json");
  return tok;
}

Json StoriesVectors() {
  auto j = ReadJsonFile(testing::SharedPath("fixtures/models/stories260K/tokenizer_vectors.json"));
  EXPECT_THAT(j, ::loraserve::testing::IsOk());
  return j.ok() ? *j : Json::object();
}

Json Gpt2Vectors() {
  auto j = ReadJsonFile(testing::SharedPath("fixtures/tokenizers/gpt2/tokenizer_vectors.json"));
  EXPECT_THAT(j, ::loraserve::testing::IsOk());
  return j.ok() ? (*j)["vectors"] : Json::array();
}

}  // namespace loraserve::core::tokenizer_testing
