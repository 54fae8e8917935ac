// Plain data describing a generation: sampling options, per-token events and the result.
// No LibTorch, so the gRPC layer and the engine's public header can use it.
#ifndef LORASERVE_CORE_MODEL_GENERATION_TYPES_H_
#define LORASERVE_CORE_MODEL_GENERATION_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace loraserve::core {

inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxTopLogprobs = 20;

// How one sequence is generated. The defaults give plain sampling at temperature 1 from the full
// distribution.
struct SamplingOptions {
  // Logits are divided by the temperature before softmax. 0 means greedy: the most likely token,
  // the lowest id among equal logits (top_k, top_p and the seed are then irrelevant).
  double temperature = 1.0;
  // Keep only the k most likely tokens (ties broken towards the lowest id, so exactly k remain).
  // 0 turns it off.
  int32_t top_k = 0;
  // Nucleus sampling: keep the smallest set of most likely tokens whose probability (after
  // temperature and top_k) adds up to at least top_p; always keeps at least one. 1 turns it off.
  double top_p = 1.0;
  // Same seed, same model, same prompt and options give the same tokens. Without a seed one is
  // drawn from std::random_device (and reported back in the result).
  std::optional<uint64_t> seed;
  // Upper bound on the number of new tokens (the EOS token counts as one).
  int32_t max_new_tokens = 128;
  // Generation stops when the text contains one of these; the stop string and anything after it
  // are not returned.
  std::vector<std::string> stop;
  // Stop when the model emits an end-of-sequence token (from ModelConfig::eos_token_ids and
  // Tokenizer::eos_id()).
  bool stop_on_eos = true;
  // Return the log-probability of every chosen token, and of the `top_logprobs` most likely
  // alternatives at each step. Log-probabilities are those of the model's own distribution
  // (log_softmax of the raw logits), before temperature, top_k and top_p, as in OpenAI's and
  // vLLM's APIs.
  bool logprobs = false;
  int32_t top_logprobs = 0;
};

// OK, or InvalidArgument naming the first offending field: temperature negative or not finite,
// top_k negative, top_p outside (0, 1], max_new_tokens < 1, an empty stop string, more than
// kMaxStopStrings stop strings or one longer than kMaxStopStringBytes, top_logprobs outside
// [0, kMaxTopLogprobs] or set without logprobs.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

// One chosen token.
struct SampledToken {
  int32_t id = 0;
  // log_softmax(logits)[id], of the raw logits.
  float logprob = 0;
  // The `top_logprobs` most likely tokens, most likely first (lowest id first among equals).
  std::vector<TokenLogprob> top_logprobs;
};

enum class FinishReason {
  kLength,     // max_new_tokens reached, or the model's context (max_position_embeddings) is full
  kEos,        // the model emitted an end-of-sequence token (options.stop_on_eos)
  kStop,       // the text reached one of options.stop
  kCancelled,  // the on_token callback returned false
};

// "length", "eos", "stop", "cancelled".
const char* FinishReasonName(FinishReason reason);

// One generated token, as streamed to the caller.
struct TokenEvent {
  int32_t id = 0;
  int32_t index = 0;  // 0 for the first new token
  // The text that became final with this token (often empty: a partial UTF-8 sequence or a
  // possible beginning of a stop string is held back until decided). The last event of a
  // generation also carries whatever was held back, so the events' texts concatenate to
  // GenerationResult::text.
  std::string text;
  // log_softmax(raw logits)[id], and the top alternatives when options.top_logprobs > 0.
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
};

struct GenerationResult {
  // Every new token id, in order, including an EOS token or the token that completed a stop
  // string (the prompt is not repeated).
  std::vector<int32_t> tokens;
  // The text of the new tokens as a continuation of the prompt (see ContinuationDecoder), cut
  // before the first stop string.
  std::string text;
  FinishReason finish_reason = FinishReason::kLength;
  // The stop string that ended generation (kStop only).
  std::string stop_string;
  // One entry per token in `tokens` when options.logprobs; empty otherwise.
  std::vector<SampledToken> logprobs;
  // The sampling seed used (the drawn one when options.seed was empty).
  uint64_t seed = 0;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_GENERATION_TYPES_H_
