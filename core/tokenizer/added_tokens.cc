// The added-token matcher (see added_tokens.h).
#include "core/tokenizer/added_tokens.h"

#include <algorithm>
#include <utility>

#include "core/tokenizer/utf8.h"
#include "re2/re2.h"

namespace loraserve::core::tokenizer_internal {

void AddedTokenMatcher::Add(const AddedToken& token, std::string content) {
  if (content.empty()) return;
  entries_.push_back({token, std::move(content)});
}

void AddedTokenMatcher::Finish() {
  // Longest first, so the first hit at a position is the longest.
  std::stable_sort(entries_.begin(), entries_.end(),
                   [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  for (size_t i = 0; i < entries_.size(); ++i) {
    by_first_byte_[static_cast<uint8_t>(entries_[i].text[0])].push_back(i);
  }
}

void AddedTokenMatcher::Split(std::string_view text, bool parse_special,
                              std::vector<Span>* out) const {
  size_t start_offset = 0;
  for (size_t i = 0; i < text.size();) {
    const Entry* hit = nullptr;
    for (const size_t k : by_first_byte_[static_cast<uint8_t>(text[i])]) {
      const Entry& e = entries_[k];
      if (e.token.special && !parse_special) continue;
      if (text.compare(i, e.text.size(), e.text) == 0) {
        hit = &e;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->text.size();
    if (hit->token.single_word) {
      const bool start_ok = start == 0 || !IsWordChar(text, PrevCharStart(text, start));
      const bool stop_ok = stop == text.size() || !IsWordChar(text, stop);
      if (!start_ok || !stop_ok) {  // Consumed but not a token, as HF's match iterator does.
        i = stop;
        continue;
      }
    }
    if (hit->token.lstrip) {
      while (start > start_offset &&
             IsUnicodeWhitespace(CodepointAt(text, PrevCharStart(text, start)))) {
        start = PrevCharStart(text, start);
      }
    }
    if (hit->token.rstrip) {
      while (stop < text.size() && IsUnicodeWhitespace(CodepointAt(text, stop))) {
        stop += CharLen(text, stop);
      }
    }
    if (start > start_offset) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, hit->token.id});
    start_offset = stop;
    i = stop;
  }
  if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
}

bool AddedTokenMatcher::IsWordChar(std::string_view text, size_t i) {
  static const RE2* word = new RE2("[\\p{L}\\p{N}_]");
  const size_t len = CharLen(text, i);
  return RE2::FullMatch(re2::StringPiece(text.data() + i, len), *word);
}

}  // namespace loraserve::core::tokenizer_internal
