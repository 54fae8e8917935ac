#include "core/model/sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/torch_status.h"

namespace loraserve::core {

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", o.temperature));
  }
  if (o.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", o.top_k));
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) {  // also rejects NaN
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", o.top_p));
  }
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", o.max_new_tokens));
  }
  if (o.stop.size() > static_cast<size_t>(kMaxStopStrings)) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxStopStrings,
                                                   " stop strings, got ", o.stop.size()));
  }
  for (const std::string& s : o.stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
    if (s.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop strings are limited to ",
                                                     kMaxStopStringBytes, " bytes, got ",
                                                     s.size()));
    }
  }
  if (o.top_logprobs < 0 || o.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ",
                                                   kMaxTopLogprobs, "], got ", o.top_logprobs));
  }
  if (o.top_logprobs > 0 && !o.logprobs) {
    return absl::InvalidArgumentError("top_logprobs needs logprobs");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- Sampler

namespace {

uint64_t DrawSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
}

// Orders (weight, id) pairs most likely first, lowest id first among equals, so every selection
// below is deterministic and top_k = 1 / a tiny top_p agree with greedy.
struct MoreLikely {
  bool operator()(const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) const {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
};

}  // namespace

Sampler::Sampler(const SamplingOptions& options)
    : temperature_(options.temperature),
      top_k_(options.top_k),
      top_p_(options.top_p),
      top_logprobs_(options.logprobs ? options.top_logprobs : 0),
      seed_(options.seed.has_value() ? *options.seed : DrawSeed()),
      rng_(seed_) {}

double Sampler::UniformDouble() {
  // The top 53 bits as a double in [0, 1). Spelled out rather than
  // std::uniform_real_distribution, whose algorithm differs between standard libraries, so a seed
  // reproduces the same tokens everywhere.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

absl::StatusOr<SampledToken> Sampler::Sample(const at::Tensor& logits) {
  if (!logits.defined() || logits.dim() != 1 || logits.numel() == 0 ||
      logits.scalar_type() != at::kFloat || !logits.device().is_cpu()) {
    return absl::InvalidArgumentError(
        "sampler input must be a non-empty float32 CPU tensor of shape [vocab]");
  }
  at::Tensor row;
  {
    auto contiguous = CallTorch("sampling", [&] { return logits.contiguous(); });
    if (!contiguous.ok()) return contiguous.status();
    row = *std::move(contiguous);
  }
  const float* l = row.data_ptr<float>();
  const int32_t n = static_cast<int32_t>(row.numel());

  // One pass: validity, the maximum and the greedy choice (strict '>' keeps the lowest id).
  float max = -std::numeric_limits<float>::infinity();
  int32_t argmax = -1;
  for (int32_t i = 0; i < n; ++i) {
    const float v = l[i];
    if (std::isnan(v) || v == std::numeric_limits<float>::infinity()) {
      // The model's output, not the request: the request fails as an internal error.
      return absl::InternalError(absl::StrCat("the model produced non-finite logits (logit ", i, " is ", v, ")"));
    }
    if (v > max) {
      max = v;
      argmax = i;
    }
  }
  if (argmax < 0) return absl::InternalError("the model produced non-finite logits (every logit is -inf)");

  SampledToken out;
  if (temperature_ == 0) {
    out.id = argmax;
  } else {
    // Candidates as (weight, id); weight = exp((logit - max) / T) is the unnormalised
    // probability of softmax(logits / T). Restricting to top_k / top_p and renormalising is what
    // HF's TopKLogitsWarper / TopPLogitsWarper do, applied in the same order (temperature, top_k,
    // top_p).
    std::vector<std::pair<double, int32_t>>& cand = candidates_;
    cand.clear();
    cand.reserve(n);
    const double inv_t = 1.0 / temperature_;
    for (int32_t i = 0; i < n; ++i) {
      const double w = std::exp((static_cast<double>(l[i]) - max) * inv_t);
      if (w > 0) cand.emplace_back(w, i);
    }
    if (cand.empty()) cand.emplace_back(1.0, argmax);  // T so small that only the max survives
    if (top_k_ > 0 && static_cast<size_t>(top_k_) < cand.size()) {
      std::nth_element(cand.begin(), cand.begin() + (top_k_ - 1), cand.end(), MoreLikely());
      cand.resize(top_k_);
    }
    double total = 0;
    for (const auto& c : cand) total += c.first;
    if (top_p_ < 1) {
      // Sort only as much of the head as the nucleus needs: usually a few dozen tokens.
      const double mass = top_p_ * total;
      size_t sorted = std::min<size_t>(64, cand.size());
      while (true) {
        std::partial_sort(cand.begin(), cand.begin() + sorted, cand.end(), MoreLikely());
        double cum = 0;
        size_t keep = 0;
        while (keep < sorted && cum < mass) cum += cand[keep++].first;
        if (cum >= mass || sorted == cand.size()) {
          cand.resize(std::max<size_t>(keep, 1));
          break;
        }
        sorted = std::min(cand.size(), sorted * 4);
      }
      total = 0;
      for (const auto& c : cand) total += c.first;
    }
    // Inverse-CDF draw over the candidates.
    double r = UniformDouble() * total;
    out.id = cand.back().second;
    for (const auto& c : cand) {
      r -= c.first;
      if (r < 0) {
        out.id = c.second;
        break;
      }
    }
  }

  // log_softmax of the raw logits at the chosen token: logit - max - log(sum exp(logit - max)).
  double sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(l[i]) - max);
  const double log_z = static_cast<double>(max) + std::log(sum);
  out.logprob = static_cast<float>(static_cast<double>(l[out.id]) - log_z);
  if (top_logprobs_ > 0) {
    std::vector<std::pair<double, int32_t>>& top = candidates_;
    top.clear();
    top.reserve(n);
    for (int32_t i = 0; i < n; ++i) top.emplace_back(l[i], i);
    const size_t k = std::min<size_t>(top_logprobs_, top.size());
    std::partial_sort(top.begin(), top.begin() + k, top.end(), MoreLikely());
    for (size_t i = 0; i < k; ++i) {
      out.top_logprobs.push_back({top[i].second, static_cast<float>(top[i].first - log_z)});
    }
  }
  return out;
}

// ---------------------------------------------------------------- StopMatcher

StopMatcher::StopMatcher(std::vector<std::string> stop) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

std::string StopMatcher::Push(absl::string_view piece) {
  if (stopped_) return "";
  held_.append(piece.data(), piece.size());
  // The held text never contains a whole stop string, and no stop string can start in text
  // already emitted (that text's suffix would have been held back), so searching `held_` finds
  // every occurrence that the new piece completes. The one that ends first wins (the longest among
  // those ending at the same byte): that is the one a byte-by-byte stream would meet first, so the
  // result does not depend on how the text is cut into pieces.
  size_t first_end = std::string::npos;
  size_t first = std::string::npos;
  const std::string* which = nullptr;
  for (const std::string& s : stop_) {
    const size_t pos = held_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < first_end || (end == first_end && pos < first)) {
      first_end = end;
      first = pos;
      which = &s;
    }
  }
  if (which != nullptr) {
    stopped_ = true;
    matched_ = *which;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stop_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

}  // namespace loraserve::core
