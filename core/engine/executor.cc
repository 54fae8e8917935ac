#include "core/engine/executor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/engine/sequence.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"

namespace loraserve::core {

// The model's KV cache as the scheduler's budget.
class Executor::CacheBudget : public KvBudget {
 public:
  explicit CacheBudget(KvCache* cache) : cache_(cache) {}
  int64_t bytes_per_token() const override { return cache_->bytes_per_token(); }
  int64_t bytes_reserved() const override { return cache_->bytes_reserved(); }
  int64_t budget_bytes() const override { return cache_->budget_bytes(); }
  void Add(int64_t seq_id) override { (void)cache_->AddSequence(seq_id); }
  absl::Status Reserve(int64_t seq_id, int64_t total_tokens) override {
    return cache_->Reserve(seq_id, total_tokens);
  }
  // A preempted or finished sequence drops its cached tokens: a recompute starts from zero.
  void Remove(int64_t seq_id) override { cache_->RemoveSequence(seq_id); }

 private:
  KvCache* const cache_;
};

Executor::Executor(const Model& model, LoraModel* lora, int64_t kv_budget_bytes)
    : lora_(lora),
      cache_(std::make_unique<KvCache>(model.config(), model.options(), kv_budget_bytes)),
      budget_(std::make_unique<CacheBudget>(cache_.get())) {}

Executor::~Executor() = default;

KvBudget* Executor::kv() { return budget_.get(); }

absl::StatusOr<std::vector<absl::StatusOr<std::optional<TokenEvent>>>> Executor::Step(
    const std::vector<BatchRow>& rows) {
  std::vector<SequenceInput> batch;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;
  batch.reserve(rows.size());
  adapters.reserve(rows.size());
  for (const BatchRow& row : rows) {
    const auto& s = static_cast<const Sequence&>(*row.request);
    SequenceInput in{s.id, {}};
    in.tokens.reserve(static_cast<size_t>(row.count));
    for (int64_t p = row.start; p < row.start + row.count; ++p) in.tokens.push_back(s.TokenAt(p));
    batch.push_back(std::move(in));
    adapters.push_back(s.adapter);
  }
  LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits, lora_->Forward(batch, adapters, cache_.get(), LogitsMode::kLast));
  at::Tensor cpu = logits.to(at::kCPU);
  std::vector<absl::StatusOr<std::optional<TokenEvent>>> out;
  out.reserve(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!rows[i].samples()) {
      out.emplace_back(std::nullopt);
      continue;
    }
    auto& s = static_cast<Sequence&>(*rows[i].request);
    absl::StatusOr<TokenEvent> event =
        CallTorch("sampling", [&] { return s.generator->Step(cpu[static_cast<int64_t>(i)]); });
    if (event.ok()) {
      out.emplace_back(std::optional<TokenEvent>(std::move(*event)));
    } else {
      out.emplace_back(event.status());
    }
  }
  return out;
}

absl::StatusOr<ScoreResult> Executor::Score(const ScoreRequest& request,
                                            const std::shared_ptr<const LoraAdapter>& adapter) {
  LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits, lora_->Score(request.token_ids, adapter));
  return CallTorch("scoring", [&]() {
    // Plain loops over the float rows: a few dozen tiny LibTorch operators (log_softmax, topk,
    // element reads) cost more than the forward of a short request on a small model.
    ScoreResult r;
    at::Tensor cpu = logits.to(at::kCPU).to(at::kFloat).contiguous();
    r.num_tokens = cpu.size(0);
    r.vocab_size = cpu.size(1);
    const float* data = cpu.data_ptr<float>();
    if (request.full_logits) r.logits.assign(data, data + cpu.numel());
    const int64_t vocab = r.vocab_size;
    const int64_t k = std::min<int64_t>(request.top_logprobs, vocab);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    for (int64_t t = 0; t < r.num_tokens; ++t) {
      const float* row = data + t * vocab;
      // log_softmax as ATen computes it: x − max − log Σ exp(x − max).
      const float max_logit = *std::max_element(row, row + vocab);
      float total = 0;
      for (int64_t i = 0; i < vocab; ++i) total += std::exp(row[i] - max_logit);
      const float log_total = std::log(total);
      auto logprob = [&](int32_t i) { return (row[i] - max_logit) - log_total; };
      if (t + 1 < r.num_tokens) r.token_logprobs.push_back(logprob(request.token_ids[t + 1]));
      if (k == 0) continue;
      std::iota(order.begin(), order.end(), 0);
      // Highest first; equal logits by lower token id.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      std::vector<TokenLogprob> top;
      for (int64_t j = 0; j < k; ++j) top.push_back({order[j], logprob(order[j])});
      r.top.push_back(std::move(top));
    }
    return r;
  });
}

}  // namespace loraserve::core
