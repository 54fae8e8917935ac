// The scheduler: which waiting requests run, and which tokens of which running requests go into
// the next step. It knows requests only as queue entries with token counts, an adapter, a deadline
// and a cancel flag; it never sees the model, so it is testable with a fake executor
// (tests/core/engine/scheduler_test.cc). The KV memory it plans against is behind `KvBudget`
// (the model's KV cache in the engine, a fake in tests; a paged allocator later).
//
// Policy:
//   - FIFO queues per tenant and adapter; Submit refuses (ResourceExhausted) beyond `max_queue`
//     waiting in all or `max_queue_per_adapter` waiting for one tenant's adapter;
//   - admission is tenant-fair, then adapter-fair: each free slot (up to `max_batch_size` running)
//     goes to the tenant with waiting requests whose running requests per unit of weight would be
//     fewest with it (ties: round-robin after the tenant admitted last), so running slots, and
//     with them decoded tokens, are shared by weight among the tenants with traffic however much
//     each sends; within the tenant, round-robin over its adapters with waiting requests after the
//     one admitted last, so a hot adapter cannot starve the others;
//   - KV admission: a request whose prompt does not fit beside the running ones waits, and
//     admission stops there (nobody overtakes it), so a large prompt is not starved by a stream of
//     small ones: it runs once enough running requests have finished;
//   - each step: decode rows first (one token each), then prefill chunks, within
//     `max_batch_tokens` new tokens; rows of one adapter contiguous (one GEMM pair per adapter);
//     kSingleAdapter runs the rows of one adapter per step, round-robin;
//   - when the KV cache cannot grow for a row, the most recently admitted other request is
//     preempted (its KV freed, back to the front of its queue, recomputed from prompt + generated
//     later); a request that does not fit even alone fails with ResourceExhausted;
//   - cancelled, past-deadline and (when draining has expired) all requests leave at the next
//     NextBatch with Cancelled / DeadlineExceeded / Unavailable.
//
// Threading: Submit, Cancel, waiting(), running(), preemptions() are thread-safe. NextBatch,
// Advance, Complete and TakeAll belong to one owner thread (the engine thread) and must not be
// called concurrently with each other; they do KV work (which may allocate) outside the queue lock.
#ifndef LORASERVE_CORE_ENGINE_SCHEDULER_H_
#define LORASERVE_CORE_ENGINE_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace loraserve::core {

enum class BatchPolicy {
  kMixed,          // rows of different adapters share a batch (default)
  kSingleAdapter,  // each step runs rows of one adapter only (PEFT-style), round-robin
};

struct SchedulerOptions {
  int max_batch_size = 32;          // running requests (rows per step)
  int max_batch_tokens = 2048;      // new tokens per step; long prompts are prefilled in chunks
  int max_queue = 1024;             // waiting requests in all
  int max_queue_per_adapter = 256;  // waiting requests of one adapter
  BatchPolicy policy = BatchPolicy::kMixed;
};

// The KV memory the scheduler plans against, in the units of the model's KV cache.
class KvBudget {
 public:
  virtual ~KvBudget() = default;
  virtual int64_t bytes_per_token() const = 0;
  virtual int64_t bytes_reserved() const = 0;
  virtual int64_t budget_bytes() const = 0;  // <= 0: unbounded
  // Starts an empty sequence.
  virtual void Add(int64_t seq_id) = 0;
  // Makes room for `total_tokens` tokens; ResourceExhausted (nothing changes) when over budget.
  virtual absl::Status Reserve(int64_t seq_id, int64_t total_tokens) = 0;
  virtual void Remove(int64_t seq_id) = 0;
};

// What the scheduler knows of one request. The engine's request state derives from it; tests use
// it as is. The submitter sets the first block; the scheduler owns the rest.
struct ScheduledRequest {
  virtual ~ScheduledRequest() = default;

  std::string adapter_name;           // queue key with the tenant ("" = the base model)
  std::string tenant;                 // fair-share group ("" = none given)
  double weight = 1.0;                // the tenant's share weight (> 0)
  const void* adapter_key = nullptr;  // rows with the same key are placed side by side
  absl::Time deadline = absl::InfiniteFuture();
  int64_t prompt_tokens = 0;          // > 0
  std::atomic<bool> cancelled{false};

  int64_t id = 0;               // unique, assigned by Submit
  int64_t context_tokens = 0;   // prompt + generated so far
  int64_t cached_tokens = 0;    // of those, in the KV cache
  bool prefilling = true;       // false once the prompt (or a recompute) has been fed
  absl::Time submitted;
  absl::Time scheduled = absl::InfinitePast();  // first admitted

  int64_t pending_tokens() const { return context_tokens - cached_tokens; }
};

// One row of a step: feed tokens [start, start + count) of the request's context to the model.
struct BatchRow {
  std::shared_ptr<ScheduledRequest> request;
  int64_t start = 0;
  int64_t count = 0;
  // The chunk reaches the end of the context: the executor samples the next token after it.
  bool samples() const { return start + count == request->context_tokens; }
};

struct StepPlan {
  std::vector<BatchRow> rows;  // empty: nothing to run
  // Requests that left without running (cancelled, deadline, drain, too large for the KV budget)
  // with the status to report. Their KV memory is already freed.
  std::vector<std::pair<std::shared_ptr<ScheduledRequest>, absl::Status>> stopped;
  int distinct_adapters = 0;  // among rows
  int64_t new_tokens = 0;     // sum of rows' counts
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvBudget* kv);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `request` (prompt_tokens > 0) at `now`. ResourceExhausted when a queue limit is
  // reached (nothing queued then).
  absl::Status Submit(std::shared_ptr<ScheduledRequest> request, absl::Time now);
  // Marks the request cancelled; it leaves at the next NextBatch. Safe on finished requests.
  static void Cancel(ScheduledRequest& request) { request.cancelled = true; }

  // Owner thread. Drops requests that must stop, admits waiting ones, and forms the next step.
  // `drain_expired`: the shutdown drain deadline has passed, so everything stops (Unavailable).
  StepPlan NextBatch(absl::Time now, bool drain_expired = false);
  // Owner thread. The row's tokens are now in the KV cache; `sampled`: the executor sampled one
  // more token after them, which the next step feeds.
  void Advance(const BatchRow& row, bool sampled);
  // Owner thread. A running request is done (finished or failed): it leaves, its KV is freed.
  void Complete(const ScheduledRequest& request);
  // Owner thread. Removes every running and waiting request (freeing KV), for shutdown.
  std::vector<std::shared_ptr<ScheduledRequest>> TakeAll();

  int64_t waiting() const { return waiting_count_.load(std::memory_order_relaxed); }
  int64_t running() const { return running_count_.load(std::memory_order_relaxed); }
  int64_t preemptions() const { return preemptions_.load(std::memory_order_relaxed); }

 private:
  void Admit(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes `request` from the running set (freeing its KV).
  void DropRunning(const ScheduledRequest* request);
  // Preempts the most recently admitted running request other than `keep`; false if none.
  bool Preempt(const ScheduledRequest* keep, std::vector<BatchRow>* rows);
  void SetRunningCount() { running_count_.store(static_cast<int64_t>(running_.size())); }

  const SchedulerOptions options_;
  KvBudget* const kv_;

  absl::Mutex mu_;
  // Keyed by (tenant, adapter).
  using QueueKey = std::pair<std::string, std::string>;
  static QueueKey KeyOf(const ScheduledRequest& r) { return {r.tenant, r.adapter_name}; }
  std::map<QueueKey, std::deque<std::shared_ptr<ScheduledRequest>>> queues_ ABSL_GUARDED_BY(mu_);
  int64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::string last_admitted_tenant_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> last_admitted_adapter_ ABSL_GUARDED_BY(mu_);  // per tenant
  std::atomic<int64_t> waiting_count_{0};
  std::atomic<int64_t> running_count_{0};
  std::atomic<int64_t> preemptions_{0};

  // Owner thread only. Admission order (the newest last).
  std::vector<std::shared_ptr<ScheduledRequest>> running_;
  std::string single_last_;  // kSingleAdapter: the adapter of the previous step
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_ENGINE_SCHEDULER_H_
