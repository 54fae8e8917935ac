// libFuzzer target: tokenizer.json loading and encoding. The first byte picks the mode:
//   even: the rest is a tokenizer.json; one that loads must encode and decode a fixed text;
//   odd:  the rest is text for the built-in model's tokenizer (LORASERVE_FUZZ_TOKENIZER, set by
//         the build): Encode (special tokens parsed or not), Decode, and the streaming decoder,
//         whose pieces must add up to Decode's text.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer.h"

namespace {

using loraserve::core::Tokenizer;

const Tokenizer* BuiltIn() {
  static const Tokenizer* t = [] {
    auto loaded = Tokenizer::FromFile(LORASERVE_FUZZ_TOKENIZER);
    if (!loaded.ok()) std::abort();
    return loaded->release();
  }();
  return t;
}

void Exercise(const Tokenizer& t, std::string_view text, bool parse_special) {
  loraserve::core::EncodeOptions o;
  o.parse_special = parse_special;
  const std::vector<int32_t> ids = t.Encode(text, o);
  for (int32_t id : ids) {
    if (id < 0 || id >= t.vocab_size()) std::abort();
  }
  const std::string whole = t.Decode(ids);
  loraserve::core::StreamingDecoder stream(t, /*skip_special_tokens=*/false);
  std::string pieces;
  for (int32_t id : ids) pieces += stream.Next(id);
  pieces += stream.Finish();
  if (pieces != whole) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)BuiltIn();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    auto json = loraserve::core::ParseJson(absl::string_view(rest.data(), rest.size()), "tokenizer.json");
    if (!json.ok()) return 0;
    auto t = Tokenizer::FromJson(*json, "tokenizer.json");
    if (t.ok()) Exercise(**t, "Once upon a time, <s> there was\n a \xF0\x9F\x90\xBB.", (data[0] & 2) != 0);
    return 0;
  }
  Exercise(*BuiltIn(), rest, (data[0] & 2) != 0);
  return 0;
}
