// Single-sequence text generation: prefill, then one KV-cached decode step per token, with
// sampling, stop strings, EOS and streaming. Used by tests and command-line tools; a batching
// engine reuses the same Sampler and StopMatcher per sequence instead of calling Generate().
#ifndef LORASERVE_CORE_ENGINE_GENERATE_H_
#define LORASERVE_CORE_ENGINE_GENERATE_H_

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/tokenizer/tokenizer.h"

namespace loraserve::core {

// The text of generated tokens as a continuation of the prompt, streamed: what
// Decode(prompt + generated) adds to Decode(prompt) (special tokens skipped). Decoding the new ids
// on their own would be wrong for Llama-style tokenizers, whose decoder strips the leading space
// of the first word ("▁time" after "Once upon a" must give " time", not "time"). The prompt is run
// through a StreamingDecoder first and its text dropped; text the decoder still held back for the
// prompt (e.g. a pending run of byte-fallback tokens) is dropped as it comes out. One exception: if
// the prompt ends inside a UTF-8 character, its final byte-fallback run decodes to U+FFFD per byte
// on its own (as in HF) but to real characters once the continuation completes it; that run is
// then returned, decoded again, at the start of the continuation.
//
// Thread-safety: one per sequence; not safe for concurrent use. The Tokenizer must outlive it.
class ContinuationDecoder {
 public:
  ContinuationDecoder(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt_ids);

  // Adds one generated id; returns the newly final text (often empty).
  std::string Next(int32_t id);
  // Ends the sequence and returns what was held back. Call once; Next() must not follow.
  std::string Finish();

 private:
  std::string DropPromptText(std::string piece);

  StreamingDecoder decoder_;
  // The prompt's text that the decoder has not returned yet; dropped from its next output.
  std::string pending_prompt_text_;
};

// The per-sequence state of one generation: sampling, EOS and stop-string detection, streamed
// text. Shared by Generate() below and the batching engine, so both finish sequences by the same
// rules. Not thread-safe; one per sequence.
class SequenceGenerator {
 public:
  // `options` must have passed ValidateSamplingOptions and the prompt ValidatePrompt.
  SequenceGenerator(const ModelConfig& config, const Tokenizer& tokenizer,
                    const std::vector<int32_t>& prompt_ids, const SamplingOptions& options);

  // InvalidArgument for an empty prompt, one longer than the context, or ids outside the vocabulary.
  static absl::Status ValidatePrompt(const ModelConfig& config, const std::vector<int32_t>& prompt_ids);

  // Samples the next token from a float32 CPU logits row [vocab] and returns its event; after the
  // token that ends generation (EOS, stop string, max_new_tokens, full context) finished() is
  // true and the event carries all held-back text.
  absl::StatusOr<TokenEvent> Step(const at::Tensor& logits_row);
  // Ends an unfinished generation with FinishReason::kCancelled.
  void Cancel();
  bool finished() const { return finished_; }
  GenerationResult& result() { return result_; }
  int64_t prompt_len() const { return prompt_len_; }

 private:
  SamplingOptions options_;
  int64_t max_context_;
  int64_t prompt_len_;
  std::set<int32_t> eos_;
  Sampler sampler_;
  StopMatcher stop_;
  ContinuationDecoder decoder_;
  GenerationResult result_;
  bool finished_ = false;
};

// Generates a continuation of `prompt_ids` (which should start with BOS where the model expects
// one; nothing is added) with `model` and `tokenizer`, through Model::Forward with `hooks` (e.g.
// a LoRA adapter) on every step. `on_token`, if given, is called on this thread after every new
// token; returning false cancels generation (finish reason kCancelled, the result holds what was
// generated so far) unless that token ended it anyway.
//
// Errors: InvalidArgument for invalid options (see ValidateSamplingOptions), an empty prompt, a
// prompt longer than max_position_embeddings or an id outside the vocabulary; errors of
// Model::Forward otherwise. Thread-safety: safe to call concurrently (each call has its own KV
// cache and sampler) as long as nobody mutates the model meanwhile.
// Builds the hooks for one forward over `batch` (e.g. LoraModel::MakeHooks with the adapter):
// hooks are per-forward objects because they know the batch's row layout.
using HooksFactory =
    std::function<std::unique_ptr<ForwardHooks>(absl::Span<const SequenceInput> batch)>;

absl::StatusOr<GenerationResult> Generate(const Model& model, const Tokenizer& tokenizer,
                                          const std::vector<int32_t>& prompt_ids,
                                          const SamplingOptions& options,
                                          const HooksFactory& make_hooks = nullptr,
                                          std::function<bool(const TokenEvent&)> on_token = nullptr);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_ENGINE_GENERATE_H_
