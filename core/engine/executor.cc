#include "core/engine/executor.h"

#include <ATen/ATen.h>

#include <utility>

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
    ScoreResult r;
    at::Tensor cpu = logits.to(at::kCPU).contiguous();
    r.num_tokens = cpu.size(0);
    r.vocab_size = cpu.size(1);
    if (request.full_logits) {
      r.logits.assign(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
    }
    at::Tensor logp = at::log_softmax(cpu, -1);
    for (int64_t t = 0; t + 1 < r.num_tokens; ++t) {
      r.token_logprobs.push_back(logp[t][request.token_ids[t + 1]].item<float>());
    }
    if (request.top_logprobs > 0) {
      auto [values, indices] = at::topk(logp, request.top_logprobs, -1);
      for (int64_t t = 0; t < r.num_tokens; ++t) {
        std::vector<TokenLogprob> row;
        for (int64_t k = 0; k < request.top_logprobs; ++k) {
          row.push_back({static_cast<int32_t>(indices[t][k].item<int64_t>()), values[t][k].item<float>()});
        }
        r.top.push_back(std::move(row));
      }
    }
    return r;
  });
}

}  // namespace loraserve::core
