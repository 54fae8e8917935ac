// The executor: runs model work for the engine — one batched step (a forward over every row's
// new tokens with per-row adapters, then sampling for the rows whose context is complete) and
// scoring requests. It owns the KV cache (exposed to the scheduler as a KvBudget) and knows
// nothing of queues, admission or fairness. This is where a CUDA executor plugs in.
//
// Threading: one thread (the engine thread, or a worker for Score when the model is not being
// mutated) at a time.
#ifndef LORASERVE_CORE_ENGINE_EXECUTOR_H_
#define LORASERVE_CORE_ENGINE_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"
#include "core/engine/scheduler.h"
#include "core/lora/lora_adapter.h"

namespace loraserve::core {

class KvCache;
class LoraModel;
class Model;

class Executor {
 public:
  // `lora` wraps the model; the KV cache gets `kv_budget_bytes` (<= 0: unbounded).
  Executor(const Model& model, LoraModel* lora, int64_t kv_budget_bytes);
  ~Executor();

  KvBudget* kv();

  // Runs one step over `rows` (requests are engine Sequences). The result has one entry per row,
  // in order: nullopt when the row fed a prompt chunk with more to come, the sampled token, or
  // the sampling error of that row. The forward's error (all rows failed) otherwise.
  absl::StatusOr<std::vector<absl::StatusOr<std::optional<TokenEvent>>>> Step(
      const std::vector<BatchRow>& rows);

  // Scores `request.token_ids` with `adapter` (nullptr = base) without the KV cache.
  absl::StatusOr<ScoreResult> Score(const ScoreRequest& request,
                                    const std::shared_ptr<const LoraAdapter>& adapter);

 private:
  class CacheBudget;
  LoraModel* const lora_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<CacheBudget> budget_;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_ENGINE_EXECUTOR_H_
