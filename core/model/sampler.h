// Token selection for generation: the request's sampling options, a per-sequence Sampler that
// turns one row of logits into a token id, and a per-sequence StopMatcher that cuts the streamed
// text at a stop string. Both are independent of how the logits were produced, so the
// single-sequence Generate() and a batching engine use them the same way.
#ifndef LORASERVE_CORE_MODEL_SAMPLER_H_
#define LORASERVE_CORE_MODEL_SAMPLER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "core/model/generation_types.h"

namespace loraserve::core {

// Limits on request data checked by ValidateSamplingOptions.

// Picks tokens for one sequence from rows of logits, with temperature / top_k / top_p. Owns its
// random number generator (std::mt19937_64 seeded from the options), so sequences never share
// random state and a seeded sequence is reproducible regardless of what else runs.
//
// Thread-safety: not thread-safe; one Sampler per sequence, used by one thread at a time.
class Sampler {
 public:
  // `options` must have passed ValidateSamplingOptions (programmer error otherwise).
  explicit Sampler(const SamplingOptions& options);

  // Chooses the next token from `logits`, a float32 CPU tensor [vocab]. InvalidArgument if the
  // tensor has another shape, dtype or device, or contains NaN or +inf, or if every logit is
  // -inf.
  absl::StatusOr<SampledToken> Sample(const at::Tensor& logits);

  // The seed in use (the drawn one if the options had none).
  uint64_t seed() const { return seed_; }

 private:
  double UniformDouble();  // in [0, 1)

  double temperature_;
  int32_t top_k_;
  double top_p_;
  int32_t top_logprobs_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  // Scratch buffers reused between calls.
  std::vector<std::pair<double, int32_t>> candidates_;
};

// Finds stop strings in streamed text. Push() the text pieces of one sequence as they are
// decoded; it returns the text that can be shown now, holding back any suffix that might be the
// beginning of a stop string. Once a stop string is complete, the text before it is returned,
// stopped() becomes true and nothing more is ever returned. Emitted text never contains a stop
// string. The concatenation of everything returned (including Flush()) is the input cut at the
// start of the first stop string to be completed (the earliest end; the longest among those
// ending together), or all of it when none occurs; it does not depend on how the input is split
// into pieces. If the pieces and stop strings are valid UTF-8, so is every returned piece.
//
// Thread-safety: not thread-safe; one per sequence.
class StopMatcher {
 public:
  // Empty strings in `stop` are ignored.
  explicit StopMatcher(std::vector<std::string> stop);

  // Adds `piece`; returns the text now safe to emit (possibly empty).
  std::string Push(absl::string_view piece);
  // End of the stream: returns the held-back text (empty after a stop).
  std::string Flush();

  bool stopped() const { return stopped_; }
  // The stop string that ended the stream; empty while !stopped().
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stop_;
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_SAMPLER_H_
