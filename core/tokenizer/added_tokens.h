// Added tokens (tokenizer.json's "added_tokens", special or not): the matcher that cuts them out
// of the text before (normalized=false) or after (normalized=true) the normalizer. Internal to
// core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_ADDED_TOKENS_H_
#define LORASERVE_CORE_TOKENIZER_ADDED_TOKENS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loraserve::core::tokenizer_internal {

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
};

// Finds added tokens in text: leftmost match, longest at that position (HF's aho-corasick
// LeftmostLongest). Immutable and thread-safe.
class AddedTokenMatcher {
 public:
  struct Span {
    size_t begin, end;
    int32_t id;  // -1 for ordinary text.
  };

  // `content` is the text to look for (the normalized content for normalized tokens).
  void Add(const AddedToken& token, std::string content);

  // Call once after the last Add, before Split.
  void Finish();

  // Splits `text` into added-token spans and text spans (no empty text spans).
  void Split(std::string_view text, bool parse_special, std::vector<Span>* out) const;

 private:
  struct Entry {
    AddedToken token;
    std::string text;
  };

  // Rust's char::is_alphanumeric or '_' (approximated by the L and N categories).
  static bool IsWordChar(std::string_view text, size_t i);

  std::vector<Entry> entries_;
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_ADDED_TOKENS_H_
