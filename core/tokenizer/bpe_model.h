// The BPE model stage: parsing tokenizer.json's "model" (vocab, merges and options) and merging
// each pre-tokenized word into ids the way HF `tokenizers` does. Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_BPE_MODEL_H_
#define LORASERVE_CORE_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer_json.h"

namespace loraserve::core::tokenizer_internal {

// A BPE model (byte-level or sentencepiece-style with byte fallback). Immutable after
// ParseBpeModel; safe to share between threads.
struct BpeModel {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // Empty string for ids not in the vocabulary.
  std::vector<bool> has_id;
  // (left id << 32 | right id) -> (rank, merged id).
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::array<int32_t, 256> byte_ids;  // Ids of <0xNN>, -1 if absent.
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  const std::pair<int32_t, int32_t>* FindMerge(int32_t a, int32_t b) const {
    const auto it = merges.find(PairKey(a, b));
    return it == merges.end() ? nullptr : &it->second;
  }

  // Tokenizes one pre-tokenized word, appending ids. Mirrors HF BPE::merge_word + Word::merge_all.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;
};

// Fills `m` from the "model" object `j` (its type already checked to be BPE). InvalidArgument for
// a bad vocab or merge, an unknown unk_token, or dropout.
absl::Status ParseBpeModel(const JsonReader& r, const Json& j, BpeModel* m);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_BPE_MODEL_H_
