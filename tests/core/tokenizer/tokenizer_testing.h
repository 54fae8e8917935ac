// Helpers for the tokenizer tests: hand-written tokenizer.json files whose expected ids and text
// come from Hugging Face `tokenizers`, the shared fixture tokenizers, and checks every test uses.
#ifndef LORASERVE_TESTS_CORE_TOKENIZER_TOKENIZER_TESTING_H_
#define LORASERVE_TESTS_CORE_TOKENIZER_TOKENIZER_TESTING_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer.h"

namespace loraserve::core::tokenizer_testing {

// Strict UTF-8 check, written independently of the tokenizer's own.
bool IsValidUtf8(const std::string& s);

// Streams `ids` through a StreamingDecoder; every chunk must be valid UTF-8.
std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special);

// EncodeOptions with parse_special; without add_special_tokens.
EncodeOptions ParseSpecial();
EncodeOptions NoSpecialTokens();

// TokenizerOptions with eos_id.
TokenizerOptions EosOverride(int32_t eos);

// The ids in a fixture's JSON array.
std::vector<int32_t> IdsOf(const Json& v);

// The bytes of `s` in hex, for failure messages.
std::string Hex(const std::string& s);

// GPT-2's bytes_to_unicode(), to build byte-level vocabularies in tests.
std::vector<std::string> ByteToChar();

// One entry of a tokenizer.json "added_tokens" (normalized=false, no stripping).
Json AddedToken(int id, const std::string& content, bool special);

// Hand-written tokenizers (no ../shared needed). Their expected ids and text were produced with
// Hugging Face `tokenizers` 0.23.2 (npm, Rust core) on the very same JSON.

// Llama-2 / sentencepiece layout: Prepend + Replace normalizer, no pre-tokenizer, byte fallback,
// `<s> $A` template, Replace/ByteFallback/Fuse/Strip decoder.
Json TinyLlamaJson();

// Llama-3 layout: Split with the Llama-3 regex + ByteLevel(use_regex=false), ignore_merges, merges
// as pairs, `<|begin_of_text|> $A` inside a post-processor Sequence, ByteLevel decoder.
Json TinyLlama3Json();

// Newer sentencepiece layout: Metaspace pre-tokenizer (prepend_scheme "first") and decoder, no
// post-processor, unk without byte fallback.
Json TinyMetaspaceJson();

// Tokenizer::FromJson, with a test failure (and nullptr) if it does not load.
std::unique_ptr<Tokenizer> MustLoad(const Json& j);

struct Case {
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;  // Decode(ids, skip_special_tokens=false).
};

// For each case: Encode(text, opts) gives the ids, and Decode and a StreamingDecoder give the
// decoded text (with skip_special_tokens, they agree with each other).
void CheckCases(const Tokenizer& tok, const std::vector<Case>& cases, const EncodeOptions& opts);

// The tokenizers in ../shared, loaded once for all tests; nullptr (after a test failure) if one
// does not load. Tests using them start with LORASERVE_REQUIRE_SHARED().
const Tokenizer* Stories();
const Tokenizer* Gpt2();
// The reference vectors of Stories() (the whole file) and of Gpt2() (its "vectors" array); empty
// (after a test failure) if they do not load.
Json StoriesVectors();
Json Gpt2Vectors();

}  // namespace loraserve::core::tokenizer_testing

#endif  // LORASERVE_TESTS_CORE_TOKENIZER_TOKENIZER_TESTING_H_
