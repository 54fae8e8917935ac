// A Hugging Face `tokenizer.json` tokenizer (BPE models) in pure C++: encoding text to token ids,
// decoding ids to text, and incremental decoding for streamed generation.
//
// Supported `tokenizer.json` features (anything else is rejected at load with InvalidArgument, so
// a tokenizer that loads never silently tokenizes differently from Hugging Face `tokenizers`):
//   model:          BPE (merges as "a b" strings or ["a", "b"] pairs; byte_fallback, fuse_unk,
//                   unk_token, ignore_merges, continuing_subword_prefix, end_of_word_suffix).
//   normalizer:     Sequence, Prepend, Replace (String or Regex pattern), Strip, or none.
//   pre_tokenizer:  Sequence, ByteLevel (add_prefix_space, use_regex: the GPT-2 split regex),
//                   Split (String or Regex pattern, all behaviors, invert), Metaspace
//                   (prepend_scheme first/always/never, split), Digits, or none. Regexes may use
//                   `\s+(?!\S)` (emulated by hand, RE2 has no lookahead); other lookaround is
//                   rejected.
//   post_processor: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence,
//                   or none.
//   decoder:        Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace, or none.
//   added_tokens:   special and non-special, with lstrip / rstrip / single_word / normalized.
// Not supported: WordPiece / Unigram / WordLevel models, Unicode normalization forms (NFC, NFKC,
// ...), Lowercase, BERT pre-tokenizers, BPE dropout.
#ifndef LORASERVE_CORE_TOKENIZER_TOKENIZER_H_
#define LORASERVE_CORE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/io/json_file.h"

namespace loraserve::core {

struct EncodeOptions {
  // Adds the post-processor's special tokens (e.g. Llama's BOS `<s>`), like HF
  // `encode(text, add_special_tokens=True)`.
  bool add_special_tokens = true;
  // When true, the text of a *special* added token inside the input (e.g. "<s>", "<|eot_id|>")
  // becomes that special token, as HF `tokenizers` does by default. The default here is false so
  // that user-supplied text can never inject control tokens; such text is tokenized as ordinary
  // characters instead. Non-special added tokens are always recognized.
  bool parse_special = false;
};

// Overrides for what tokenizer.json alone cannot say reliably (config.json /
// generation_config.json carry the authoritative bos/eos ids).
struct TokenizerOptions {
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
};

// An immutable tokenizer loaded from a Hugging Face `tokenizer.json`. Encode() and Decode() give
// the same ids and text as HF `tokenizers` (checked against 0.23) for the supported features;
// HF's `encode` corresponds to Encode() with parse_special = true.
//
// Thread-safety: immutable after construction; all methods are const and safe to call
// concurrently from any number of threads.
class Tokenizer {
 public:
  // NotFound if `path` does not exist; InvalidArgument (naming the file and the offending field) if
  // it is not valid JSON or uses an unsupported feature.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path,
                                                             const TokenizerOptions& options = {});
  // As FromFile, from parsed JSON; `source` names it in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const Json& json,
                                                             std::string_view source,
                                                             const TokenizerOptions& options = {});

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes `text`. Never fails: invalid UTF-8 in `text` is first replaced by U+FFFD (one per
  // maximal invalid subsequence, like Rust's String::from_utf8_lossy), since every tokenizer step
  // works on Unicode characters.
  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options = {}) const;

  // Decodes `ids` like HF `decode(ids, skip_special_tokens)`: the decoder chain runs over all
  // tokens at once (so byte-fallback runs that are not valid UTF-8 become one U+FFFD per byte, and
  // a Llama decoder strips one leading space). Ids outside the vocabulary are skipped, as in HF.
  // The result is always valid UTF-8.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  // BOS / EOS ids: the override from TokenizerOptions if given; else BOS is the special token the
  // post-processor puts first (Llama's `<s>`) and EOS the one it puts last; else an added special
  // token with a well-known name (`<s>`, `<|begin_of_text|>`, `<bos>` / `</s>`, `<|endoftext|>`,
  // `<|end_of_text|>`, `<eos>`). -1 when there is none.
  int32_t bos_id() const;
  int32_t eos_id() const;
  // The model's unknown token, -1 if it has none.
  int32_t unk_id() const;
  // One more than the largest id in the model vocabulary or the added tokens (the number of rows
  // an embedding matrix needs).
  int32_t vocab_size() const;

  // Added tokens first, then the model vocabulary (as HF). nullopt if unknown.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // True for the ids of added tokens marked `"special": true` (dropped by skip_special_tokens).
  bool IsSpecial(int32_t id) const;

 private:
  struct Impl;  // Defined in tokenizer.cc.

  explicit Tokenizer(std::unique_ptr<const Impl> impl);
  friend class StreamingDecoder;

  std::unique_ptr<const Impl> impl_;
};

// Incremental decoding for streaming: feed the generated ids one at a time, get back only the text
// that is final. The concatenation of every Next() result and Finish() is exactly
// `tokenizer.Decode(all_ids, skip_special_tokens)`, and each returned piece is valid UTF-8 that
// never splits a character. Text that a later token could still change is held back until it is
// decided: an incomplete UTF-8 sequence (byte-level models), a leading space that the decoder may
// strip, and a run of byte-fallback tokens (`<0xNN>`, sentencepiece models). The last is held
// whole until a non-byte token (or Finish) ends it, because HF decodes a run that is not valid
// UTF-8 as a whole into one U+FFFD per byte, so one bad byte at the end would change text already
// seen. Work per Next() is proportional to the new token plus what was held back, never to the
// sequence so far.
//
// Thread-safety: one instance per sequence; not safe for concurrent use. The Tokenizer must
// outlive it.
class StreamingDecoder {
 public:
  StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  ~StreamingDecoder();
  StreamingDecoder(const StreamingDecoder&) = delete;
  StreamingDecoder& operator=(const StreamingDecoder&) = delete;

  // Adds one generated id; returns the newly completed text (often empty).
  std::string Next(int32_t id);
  // Ends the sequence: returns whatever was held back. Later calls (and Next) return "".
  std::string Finish();

 private:
  struct State;  // Defined in tokenizer.cc.

  const Tokenizer& tokenizer_;
  const bool skip_special_tokens_;
  std::unique_ptr<State> state_;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_TOKENIZER_TOKENIZER_H_
