#include "core/engine/scheduler.h"

#include <algorithm>
#include <iterator>
#include <set>

#include "absl/strings/str_cat.h"

namespace loraserve::core {
namespace {

// Status for a request that must stop now (cancelled, past deadline, shutting down), or OK.
absl::Status StopReason(const ScheduledRequest& r, absl::Time now, bool drain_expired) {
  if (r.cancelled) return absl::CancelledError("request cancelled");
  if (now > r.deadline) return absl::DeadlineExceededError("request deadline exceeded");
  if (drain_expired) return absl::UnavailableError("server shut down before the request finished");
  return absl::OkStatus();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, KvBudget* kv) : options_(options), kv_(kv) {}

absl::Status Scheduler::Submit(std::shared_ptr<ScheduledRequest> request, absl::Time now) {
  if (request->prompt_tokens <= 0) return absl::InvalidArgumentError("empty prompt");
  absl::MutexLock lock(&mu_);
  if (waiting_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("request queue full (", waiting_, " waiting)"));
  }
  if (!(request->weight > 0)) request->weight = 1.0;
  auto& q = queues_[KeyOf(*request)];
  if (static_cast<int>(q.size()) >= options_.max_queue_per_adapter) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue for adapter \"", request->adapter_name, "\" full (", q.size(), " waiting)"));
  }
  request->id = next_id_++;
  request->submitted = now;
  request->context_tokens = request->prompt_tokens;
  request->cached_tokens = 0;
  request->prefilling = true;
  q.push_back(std::move(request));
  waiting_count_.store(++waiting_);
  return absl::OkStatus();
}

void Scheduler::Admit(absl::Time now) {
  std::map<std::string, int64_t> held;  // running requests per tenant
  for (const auto& r : running_) ++held[r->tenant];
  while (static_cast<int>(running_.size()) < options_.max_batch_size && waiting_ > 0) {
    // Tenants with waiting requests: their weight and their adapters with waiting requests.
    std::map<std::string, std::pair<double, std::vector<std::string>>> tenants;
    for (const auto& [key, q] : queues_) {
      if (q.empty()) continue;
      auto& t = tenants[key.first];
      t.first = q.front()->weight;
      t.second.push_back(key.second);
    }
    if (tenants.empty()) break;
    // The tenant furthest below its share, the first after the one admitted last on ties.
    std::vector<std::string> order;
    for (const auto& [tenant, t] : tenants) order.push_back(tenant);
    std::rotate(order.begin(), std::upper_bound(order.begin(), order.end(), last_admitted_tenant_), order.end());
    const std::string* pick = nullptr;
    double best = 0;
    for (const std::string& tenant : order) {
      const double share = static_cast<double>(held[tenant] + 1) / tenants[tenant].first;
      if (pick == nullptr || share < best) {
        pick = &tenant;
        best = share;
      }
    }
    const std::string tenant = *pick;
    // Its adapter after the one admitted last.
    std::vector<std::string>& adapters = tenants[tenant].second;
    auto next = std::upper_bound(adapters.begin(), adapters.end(), last_admitted_adapter_[tenant]);
    const std::string adapter = next == adapters.end() ? adapters.front() : *next;
    auto& q = queues_[{tenant, adapter}];
    std::shared_ptr<ScheduledRequest> r = q.front();
    // KV admission: a prompt that does not fit beside the running requests waits, and nobody
    // overtakes it.
    const int64_t need = (r->pending_tokens() + 1) * kv_->bytes_per_token();
    if (kv_->budget_bytes() > 0 && !running_.empty() && kv_->bytes_reserved() + need > kv_->budget_bytes()) break;
    q.pop_front();
    --waiting_;
    if (r->scheduled == absl::InfinitePast()) r->scheduled = now;
    kv_->Add(r->id);
    running_.push_back(std::move(r));
    ++held[tenant];
    last_admitted_tenant_ = tenant;
    last_admitted_adapter_[tenant] = adapter;
  }
  waiting_count_.store(waiting_);
}

void Scheduler::DropRunning(const ScheduledRequest* request) {
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& r) { return r.get() == request; });
  if (it == running_.end()) return;
  kv_->Remove(request->id);
  running_.erase(it);
  SetRunningCount();
}

bool Scheduler::Preempt(const ScheduledRequest* keep, std::vector<BatchRow>* rows) {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if (it->get() == keep) continue;
    std::shared_ptr<ScheduledRequest> r = *it;
    running_.erase(std::next(it).base());
    SetRunningCount();
    kv_->Remove(r->id);
    r->cached_tokens = 0;  // recomputed from prompt + generated
    r->prefilling = true;
    rows->erase(std::remove_if(rows->begin(), rows->end(), [&](const BatchRow& row) { return row.request == r; }),
                rows->end());
    absl::MutexLock lock(&mu_);
    queues_[KeyOf(*r)].push_front(std::move(r));
    waiting_count_.store(++waiting_);
    preemptions_.fetch_add(1);
    return true;
  }
  return false;
}

StepPlan Scheduler::NextBatch(absl::Time now, bool drain_expired) {
  StepPlan plan;
  for (size_t i = 0; i < running_.size();) {
    absl::Status why = StopReason(*running_[i], now, drain_expired);
    if (why.ok()) {
      ++i;
      continue;
    }
    kv_->Remove(running_[i]->id);
    plan.stopped.emplace_back(running_[i], std::move(why));
    running_.erase(running_.begin() + static_cast<long>(i));
  }
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, q] : queues_) {
      for (auto it = q.begin(); it != q.end();) {
        absl::Status why = StopReason(**it, now, drain_expired);
        if (why.ok()) {
          ++it;
          continue;
        }
        plan.stopped.emplace_back(*it, std::move(why));
        it = q.erase(it);
        --waiting_;
      }
    }
    if (!drain_expired) Admit(now);
    for (auto it = queues_.begin(); it != queues_.end();) {
      it = it->second.empty() ? queues_.erase(it) : std::next(it);
    }
    waiting_count_.store(waiting_);
  }
  SetRunningCount();
  if (running_.empty()) return plan;

  // Choose the rows of this step.
  std::vector<std::shared_ptr<ScheduledRequest>> candidates = running_;
  if (options_.policy == BatchPolicy::kSingleAdapter) {
    std::set<std::string> names;
    for (const auto& r : candidates) names.insert(r->adapter_name);
    auto next = names.upper_bound(single_last_);
    const std::string pick = next == names.end() ? *names.begin() : *next;
    single_last_ = pick;
    candidates.erase(std::remove_if(candidates.begin(), candidates.end(),
                                    [&](const auto& r) { return r->adapter_name != pick; }),
                     candidates.end());
  }
  // Decode rows first, then prefill chunks; each adapter's rows side by side.
  std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    if (a->prefilling != b->prefilling) return !a->prefilling;
    return std::less<const void*>()(a->adapter_key, b->adapter_key);
  });
  int64_t budget = options_.max_batch_tokens;
  for (const auto& r : candidates) {
    if (budget <= 0) break;
    if (std::find(running_.begin(), running_.end(), r) == running_.end()) continue;  // preempted
    const int64_t n = std::min<int64_t>(r->pending_tokens(), budget);
    // Make sure the KV cache can take it; preempt the newest other requests if not.
    absl::Status reserved;
    while (!(reserved = kv_->Reserve(r->id, r->cached_tokens + n)).ok()) {
      if (!Preempt(r.get(), &plan.rows)) break;
    }
    if (!reserved.ok()) {
      // Even alone it does not fit the budget: fail it rather than loop forever.
      DropRunning(r.get());
      plan.stopped.emplace_back(r, absl::ResourceExhaustedError(absl::StrCat(
                                       "the request needs more KV cache than the server's budget: ",
                                       reserved.message())));
      continue;
    }
    plan.rows.push_back({r, r->cached_tokens, n});
    budget -= n;
  }
  std::set<const void*> distinct;
  for (const BatchRow& row : plan.rows) {
    distinct.insert(row.request->adapter_key);
    plan.new_tokens += row.count;
  }
  plan.distinct_adapters = static_cast<int>(distinct.size());
  return plan;
}

void Scheduler::Advance(const BatchRow& row, bool sampled) {
  ScheduledRequest& r = *row.request;
  r.cached_tokens = row.start + row.count;
  if (r.cached_tokens == r.context_tokens) r.prefilling = false;
  if (sampled) ++r.context_tokens;
}

void Scheduler::Complete(const ScheduledRequest& request) { DropRunning(&request); }

std::vector<std::shared_ptr<ScheduledRequest>> Scheduler::TakeAll() {
  std::vector<std::shared_ptr<ScheduledRequest>> all;
  for (auto& r : running_) kv_->Remove(r->id);
  all.swap(running_);
  SetRunningCount();
  absl::MutexLock lock(&mu_);
  for (auto& [name, q] : queues_) {
    for (auto& r : q) all.push_back(std::move(r));
  }
  queues_.clear();
  waiting_ = 0;
  waiting_count_.store(0);
  return all;
}

}  // namespace loraserve::core
