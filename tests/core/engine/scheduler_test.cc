// The scheduler without a model: a fake KV budget (one byte per token, capacity exactly what was
// reserved) and a fake executor that "generates" a fixed number of tokens per request.
#include "core/engine/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

class FakeKv : public KvBudget {
 public:
  explicit FakeKv(int64_t budget) : budget_(budget) {}
  int64_t bytes_per_token() const override { return 1; }
  int64_t bytes_reserved() const override { return reserved_; }
  int64_t budget_bytes() const override { return budget_; }
  void Add(int64_t id) override {
    EXPECT_EQ(capacity_.count(id), 0u) << "sequence " << id << " added twice";
    capacity_[id] = 0;
  }
  absl::Status Reserve(int64_t id, int64_t total) override {
    auto it = capacity_.find(id);
    if (it == capacity_.end()) return absl::NotFoundError("unknown sequence");
    if (total <= it->second) return absl::OkStatus();
    if (budget_ > 0 && reserved_ + total - it->second > budget_) return absl::ResourceExhaustedError("KV full");
    reserved_ += total - it->second;
    it->second = total;
    peak_ = std::max(peak_, reserved_);
    return absl::OkStatus();
  }
  void Remove(int64_t id) override {
    auto it = capacity_.find(id);
    if (it == capacity_.end()) return;
    reserved_ -= it->second;
    capacity_.erase(it);
  }
  int64_t peak() const { return peak_; }
  size_t live() const { return capacity_.size(); }

 private:
  int64_t budget_;
  int64_t reserved_ = 0;
  int64_t peak_ = 0;
  std::map<int64_t, int64_t> capacity_;
};

// A request that finishes after `want` generated tokens.
struct FakeRequest : ScheduledRequest {
  int64_t want = 1;
  int64_t generated = 0;
  int64_t first_step = -1;  // step of its first row
  int64_t done_step = -1;
  absl::Status status;      // how it ended
  int times_done = 0;
  struct Seen {
    int64_t start, count, context;
  };
  std::vector<Seen> rows;  // every row it ran in, with its context at planning time
};

std::shared_ptr<FakeRequest> MakeRequest(const std::string& adapter, int64_t prompt, int64_t want = 1) {
  auto r = std::make_shared<FakeRequest>();
  r->adapter_name = adapter;
  static const char kKeys[256] = {};  // adapters' keys ordered like their first letters
  r->adapter_key = &kKeys[static_cast<unsigned char>(adapter[0])];
  r->prompt_tokens = prompt;
  r->want = want;
  return r;
}

absl::Time T0() { return absl::FromUnixSeconds(1000000); }

// Runs steps like the engine does: every row's tokens are "computed", rows that sample get a
// token, finished requests complete.
class FakeExecutor {
 public:
  FakeExecutor(Scheduler* scheduler, FakeKv* kv) : scheduler_(scheduler), kv_(kv) {}

  StepPlan RunStep(absl::Time now = T0(), bool drain_expired = false) {
    StepPlan plan = scheduler_->NextBatch(now, drain_expired);
    for (auto& [r, why] : plan.stopped) End(*r, why);
    for (const BatchRow& row : plan.rows) {
      auto& r = static_cast<FakeRequest&>(*row.request);
      EXPECT_GE(row.count, 1);
      EXPECT_EQ(row.start, r.cached_tokens) << "a row must continue where the KV cache ends";
      if (r.first_step < 0) r.first_step = step_;
      r.rows.push_back({row.start, row.count, r.context_tokens});
      if (!row.samples()) {
        scheduler_->Advance(row, false);
        continue;
      }
      if (++r.generated == r.want) {
        scheduler_->Complete(r);
        End(r, absl::OkStatus());
      } else {
        scheduler_->Advance(row, true);
      }
    }
    ++step_;
    return plan;
  }
  // Steps until nothing runs or waits (at most `limit` steps).
  int Drain(int limit = 10000) {
    int n = 0;
    while ((scheduler_->waiting() > 0 || scheduler_->running() > 0) && n < limit) {
      RunStep();
      ++n;
    }
    return n;
  }
  int64_t step() const { return step_; }

 private:
  void End(ScheduledRequest& req, absl::Status status) {
    auto& r = static_cast<FakeRequest&>(req);
    r.status = std::move(status);
    r.done_step = step_;
    ++r.times_done;
  }
  Scheduler* scheduler_;
  FakeKv* kv_;
  int64_t step_ = 0;
};

SchedulerOptions Options(int batch = 8, int tokens = 64) {
  SchedulerOptions o;
  o.max_batch_size = batch;
  o.max_batch_tokens = tokens;
  return o;
}

TEST(SchedulerTest, PerAdapterAndTotalQueueLimits) {
  FakeKv kv(0);
  SchedulerOptions o = Options();
  o.max_queue = 3;
  o.max_queue_per_adapter = 2;
  Scheduler s(o, &kv);
  ASSERT_OK(s.Submit(MakeRequest("a", 4), T0()));
  ASSERT_OK(s.Submit(MakeRequest("a", 4), T0()));
  EXPECT_THAT(s.Submit(MakeRequest("a", 4), T0()),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue for adapter \"a\" full (2 waiting)")));
  ASSERT_OK(s.Submit(MakeRequest("b", 4), T0()));
  EXPECT_THAT(s.Submit(MakeRequest("c", 4), T0()),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("request queue full (3 waiting)")));
  EXPECT_EQ(s.waiting(), 3);
  EXPECT_THAT(s.Submit(MakeRequest("c", 0), T0()), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SchedulerTest, IdsAreUniqueAndContextStartsAtThePrompt) {
  FakeKv kv(0);
  Scheduler s(Options(), &kv);
  auto a = MakeRequest("a", 5), b = MakeRequest("a", 7);
  ASSERT_OK(s.Submit(a, T0()));
  ASSERT_OK(s.Submit(b, T0()));
  EXPECT_NE(a->id, b->id);
  EXPECT_EQ(a->context_tokens, 5);
  EXPECT_EQ(b->pending_tokens(), 7);
  EXPECT_EQ(a->submitted, T0());
}

// Admission alternates between adapters, so one adapter's long queue cannot starve another's.
TEST(SchedulerTest, AdmissionIsRoundRobinOverAdapters) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/1), &kv);
  FakeExecutor ex(&s, &kv);
  std::vector<std::shared_ptr<FakeRequest>> hot, cold;
  for (int i = 0; i < 6; ++i) {
    hot.push_back(MakeRequest("hot", 2));
    ASSERT_OK(s.Submit(hot.back(), T0()));
  }
  for (int i = 0; i < 2; ++i) {
    cold.push_back(MakeRequest("cold", 2));
    ASSERT_OK(s.Submit(cold.back(), T0()));
  }
  std::vector<std::string> order;
  while (s.waiting() > 0 || s.running() > 0) {
    StepPlan plan = ex.RunStep();
    ASSERT_LE(plan.rows.size(), 1u);
    if (!plan.rows.empty()) order.push_back(plan.rows[0].request->adapter_name);
  }
  // One request at a time, each runs one step (prompt fits, one token): the order of admission.
  EXPECT_THAT(order, ::testing::ElementsAre("cold", "hot", "cold", "hot", "hot", "hot", "hot", "hot"));
}

// A cold adapter's request keeps being admitted while a hot adapter submits more than a batch
// every step.
TEST(SchedulerTest, NoStarvationUnderAHotAdapter) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/4), &kv);
  FakeExecutor ex(&s, &kv);
  std::vector<std::shared_ptr<FakeRequest>> all;
  auto cold = MakeRequest("zcold", 3, 2);  // sorts after "hot": plain name order would starve it
  for (int step = 0; step < 40; ++step) {
    for (int i = 0; i < 6; ++i) {
      all.push_back(MakeRequest("hot", 3, 4));
      (void)s.Submit(all.back(), T0());  // the hot queue fills up; refusals are fine here
    }
    if (step == 5) {
      ASSERT_OK(s.Submit(cold, T0()));
    }
    ex.RunStep();
  }
  ASSERT_EQ(cold->times_done, 1);
  EXPECT_OK(cold->status);
  // Admitted at the first free slot after submission (hot requests take 5 steps each).
  EXPECT_LE(cold->first_step - 5, 6);
}

// Tenant-fair admission: one tenant submits ten times the other's load over many adapters; while
// both have requests, each tenant's share of the decoded tokens follows its weight (equal weights:
// half each; 3 to 1: three quarters and one quarter), and the light tenant is never starved.
TEST(SchedulerTest, TenantsShareTokensByWeightWhateverTheirLoad) {
  for (const auto& [heavy_weight, want_share] : std::vector<std::pair<double, double>>{{1.0, 0.5}, {3.0, 0.75}}) {
    FakeKv kv(0);
    Scheduler s(Options(/*batch=*/8, /*tokens=*/512), &kv);
    FakeExecutor ex(&s, &kv);
    std::vector<std::shared_ptr<FakeRequest>> light;
    auto submit = [&](const std::string& tenant, double weight, const std::string& adapter) {
      auto r = MakeRequest(adapter, 4, 20);
      r->tenant = tenant;
      r->weight = weight;
      EXPECT_OK(s.Submit(r, T0()));
      return r;
    };
    for (int i = 0; i < 80; ++i) submit("heavy", heavy_weight, std::string(1, static_cast<char>('a' + i % 4)));
    for (int i = 0; i < 8; ++i) light.push_back(submit("light", 1.0, "z"));
    std::map<std::string, int64_t> tokens;
    auto light_active = [&] {
      return std::any_of(light.begin(), light.end(), [](const auto& r) { return r->times_done == 0; });
    };
    int steps = 0;
    while (light_active() && steps < 1000) {
      StepPlan plan = ex.RunStep();
      for (const BatchRow& row : plan.rows) {
        if (row.samples()) ++tokens[row.request->tenant];
      }
      ++steps;
    }
    ASSERT_FALSE(light_active()) << "the light tenant starved";
    const double heavy_share =
        static_cast<double>(tokens["heavy"]) / static_cast<double>(tokens["heavy"] + tokens["light"]);
    std::cout << "weights " << heavy_weight << ":1, heavy tenant offered 10x: heavy share of tokens "
              << heavy_share << " (weight share " << want_share << ") over " << steps << " steps\n";
    EXPECT_NEAR(heavy_share, want_share, 0.05) << "weights " << heavy_weight << ":1";
    for (const auto& r : light) EXPECT_OK(r->status);
  }
}

// Within a tenant, adapters still take turns; the base model ("") of two tenants is two queues.
TEST(SchedulerTest, QueuesArePerTenantAndAdapter) {
  FakeKv kv(0);
  SchedulerOptions o = Options(/*batch=*/1);
  o.max_queue_per_adapter = 1;
  Scheduler s(o, &kv);
  auto a = MakeRequest("", 2);
  a->tenant = "a";
  auto b = MakeRequest("", 2);
  b->tenant = "b";
  ASSERT_OK(s.Submit(a, T0()));
  ASSERT_OK(s.Submit(b, T0()));  // a's base queue is full, b's is its own
  auto a2 = MakeRequest("", 2);
  a2->tenant = "a";
  EXPECT_THAT(s.Submit(a2, T0()), StatusIs(absl::StatusCode::kResourceExhausted));
}

// A large prompt that does not fit beside the running requests waits, but nobody overtakes it:
// it runs once the running requests finish, even while small ones keep arriving.
TEST(SchedulerTest, LargePromptIsNotStarvedBySmallOnes) {
  FakeKv kv(/*budget=*/40);
  Scheduler s(Options(/*batch=*/8, /*tokens=*/64), &kv);
  FakeExecutor ex(&s, &kv);
  std::vector<std::shared_ptr<FakeRequest>> small;
  for (int i = 0; i < 3; ++i) {
    small.push_back(MakeRequest("a", 8, 3));
    ASSERT_OK(s.Submit(small.back(), T0()));
  }
  ex.RunStep();  // the three small ones run (24 of 40 bytes)
  auto large = MakeRequest("b", 30, 2);
  ASSERT_OK(s.Submit(large, T0()));
  for (int step = 0; step < 30 && large->times_done == 0; ++step) {
    small.push_back(MakeRequest("a", 8, 3));
    (void)s.Submit(small.back(), T0());
    ex.RunStep();
    EXPECT_LE(kv.bytes_reserved(), 40);
  }
  ASSERT_EQ(large->times_done, 1);
  EXPECT_OK(large->status);
  // No small request submitted after the large one started before it.
  for (size_t i = 3; i < small.size(); ++i) {
    if (small[i]->first_step >= 0) {
      EXPECT_GE(small[i]->first_step, large->first_step) << i;
    }
  }
}

// Decode rows come first, then prefill chunks within the token budget; a long prompt is fed in
// chunks, each continuing where the last ended.
TEST(SchedulerTest, TokenBudgetChunksPrefillAndPutsDecodeFirst) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/8, /*tokens=*/8), &kv);
  FakeExecutor ex(&s, &kv);
  auto a = MakeRequest("a", 3, 5), b = MakeRequest("b", 12, 2);
  ASSERT_OK(s.Submit(a, T0()));
  ASSERT_OK(s.Submit(b, T0()));
  StepPlan p1 = ex.RunStep();
  ASSERT_EQ(p1.rows.size(), 2u);
  EXPECT_EQ(p1.rows[0].request, a);
  EXPECT_EQ(p1.rows[0].count, 3);
  EXPECT_EQ(p1.rows[1].request, b);
  EXPECT_EQ(p1.rows[1].count, 5);  // 8 - 3
  EXPECT_EQ(p1.new_tokens, 8);
  EXPECT_EQ(p1.distinct_adapters, 2);
  StepPlan p2 = ex.RunStep();
  ASSERT_EQ(p2.rows.size(), 2u);
  EXPECT_EQ(p2.rows[0].request, a);  // decoding: first, one token
  EXPECT_EQ(p2.rows[0].start, 3);
  EXPECT_EQ(p2.rows[0].count, 1);
  EXPECT_EQ(p2.rows[1].request, b);
  EXPECT_EQ(p2.rows[1].start, 5);
  EXPECT_EQ(p2.rows[1].count, 7);  // the rest of its prompt, samples
  // Whether each row sampled (its chunk reached the end of the context when planned).
  auto sampled = [](const FakeRequest::Seen& row) { return row.start + row.count == row.context; };
  ASSERT_EQ(a->rows.size(), 2u);
  ASSERT_EQ(b->rows.size(), 2u);
  EXPECT_TRUE(sampled(a->rows[0]));
  EXPECT_FALSE(sampled(b->rows[0]));
  EXPECT_TRUE(sampled(b->rows[1]));
  ex.Drain();
  EXPECT_OK(a->status);
  EXPECT_OK(b->status);
  EXPECT_EQ(a->generated, 5);
  EXPECT_EQ(kv.bytes_reserved(), 0);
  EXPECT_EQ(kv.live(), 0u);
}

TEST(SchedulerTest, BatchSizeLimitsRunningRequests) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/3), &kv);
  FakeExecutor ex(&s, &kv);
  for (int i = 0; i < 10; ++i) ASSERT_OK(s.Submit(MakeRequest(i % 2 ? "a" : "b", 2, 3), T0()));
  StepPlan p = ex.RunStep();
  EXPECT_EQ(p.rows.size(), 3u);
  EXPECT_EQ(s.running(), 3);
  EXPECT_EQ(s.waiting(), 7);
}

TEST(SchedulerTest, DeadlinesStopQueuedAndRunningRequests) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/1), &kv);
  FakeExecutor ex(&s, &kv);
  auto running = MakeRequest("a", 2, 100), queued = MakeRequest("a", 2, 100), later = MakeRequest("a", 2, 2);
  running->deadline = T0() + absl::Seconds(1);
  queued->deadline = T0() + absl::Seconds(1);
  ASSERT_OK(s.Submit(running, T0()));
  ASSERT_OK(s.Submit(queued, T0()));
  ASSERT_OK(s.Submit(later, T0()));
  ex.RunStep(T0());
  EXPECT_EQ(running->first_step, 0);
  StepPlan p = ex.RunStep(T0() + absl::Seconds(2));
  EXPECT_EQ(p.stopped.size(), 2u);
  EXPECT_THAT(running->status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(queued->status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_EQ(p.rows.size(), 1u);
  EXPECT_EQ(p.rows[0].request, later);  // the freed slot is used in the same step
  EXPECT_EQ(kv.live(), 1u);
}

TEST(SchedulerTest, CancellationStopsAtTheNextStepAndFreesKv) {
  FakeKv kv(0);
  Scheduler s(Options(), &kv);
  FakeExecutor ex(&s, &kv);
  auto a = MakeRequest("a", 4, 100), b = MakeRequest("b", 4, 100);
  ASSERT_OK(s.Submit(a, T0()));
  ASSERT_OK(s.Submit(b, T0()));
  ex.RunStep();
  EXPECT_EQ(kv.bytes_reserved(), 8);
  Scheduler::Cancel(*a);
  StepPlan p = ex.RunStep();
  EXPECT_THAT(a->status, StatusIs(absl::StatusCode::kCancelled));
  ASSERT_EQ(p.rows.size(), 1u);
  EXPECT_EQ(p.rows[0].request, b);
  EXPECT_EQ(kv.bytes_reserved(), 5);  // b: 4 prompt + 1 fed token
  // A queued request cancelled before it ever ran leaves too.
  auto c = MakeRequest("c", 4, 1);
  ASSERT_OK(s.Submit(c, T0()));
  Scheduler::Cancel(*c);
  ex.RunStep();
  EXPECT_THAT(c->status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(c->first_step, -1);
  EXPECT_EQ(c->times_done, 1);
}

// When the KV cache cannot grow, the newest other request is preempted, goes back to the front
// of its queue and is later recomputed from prompt + generated tokens.
TEST(SchedulerTest, KvPressurePreemptsTheNewestAndRecomputesIt) {
  FakeKv kv(/*budget=*/12);
  Scheduler s(Options(/*batch=*/4, /*tokens=*/64), &kv);
  FakeExecutor ex(&s, &kv);
  auto old_one = MakeRequest("a", 4, 6), new_one = MakeRequest("b", 4, 6);
  ASSERT_OK(s.Submit(old_one, T0()));
  ASSERT_OK(s.Submit(new_one, T0()));
  ex.RunStep();  // both prefilled: 8 of 12
  while (s.waiting() > 0 || s.running() > 0) {
    ex.RunStep();
    EXPECT_LE(kv.bytes_reserved(), 12);
  }
  EXPECT_GE(s.preemptions(), 1);
  // Recomputed: one row from position 0 over prompt + everything generated so far.
  bool saw_recompute = false;
  for (const FakeRequest::Seen& row : new_one->rows) {
    if (row.start == 0 && row.count > 4) {
      saw_recompute = true;
      EXPECT_EQ(row.count, row.context);
    }
  }
  EXPECT_TRUE(saw_recompute);
  EXPECT_OK(old_one->status);
  EXPECT_OK(new_one->status);
  EXPECT_EQ(old_one->generated, 6);
  EXPECT_EQ(new_one->generated, 6);
  EXPECT_LT(old_one->done_step, new_one->done_step);  // the older one was never the victim
}

TEST(SchedulerTest, RequestLargerThanTheWholeBudgetFails) {
  FakeKv kv(/*budget=*/10);
  Scheduler s(Options(), &kv);
  FakeExecutor ex(&s, &kv);
  auto huge = MakeRequest("a", 11), fine = MakeRequest("a", 3);
  ASSERT_OK(s.Submit(huge, T0()));
  ASSERT_OK(s.Submit(fine, T0()));
  ex.Drain();
  EXPECT_THAT(huge->status, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("more KV cache than")));
  EXPECT_OK(fine->status);
  EXPECT_EQ(kv.live(), 0u);
}

TEST(SchedulerTest, SingleAdapterPolicyRunsOneAdapterPerStep) {
  FakeKv kv(0);
  SchedulerOptions o = Options();
  o.policy = BatchPolicy::kSingleAdapter;
  Scheduler s(o, &kv);
  FakeExecutor ex(&s, &kv);
  for (const char* a : {"x", "y", "z", "x", "y"}) ASSERT_OK(s.Submit(MakeRequest(a, 2, 3), T0()));
  std::vector<std::string> order;
  while (s.waiting() > 0 || s.running() > 0) {
    StepPlan p = ex.RunStep();
    std::set<std::string> names;
    for (const BatchRow& row : p.rows) names.insert(row.request->adapter_name);
    ASSERT_EQ(names.size(), 1u);
    EXPECT_EQ(p.distinct_adapters, 1);
    order.push_back(*names.begin());
  }
  ASSERT_GE(order.size(), 3u);
  EXPECT_EQ(order[0], "x");
  EXPECT_EQ(order[1], "y");
  EXPECT_EQ(order[2], "z");
}

TEST(SchedulerTest, ExpiredDrainStopsEverythingAndTakeAllEmpties) {
  FakeKv kv(0);
  Scheduler s(Options(/*batch=*/1), &kv);
  FakeExecutor ex(&s, &kv);
  auto a = MakeRequest("a", 2, 50), b = MakeRequest("a", 2, 50), c = MakeRequest("b", 2, 50);
  for (auto& r : {a, b, c}) ASSERT_OK(s.Submit(r, T0()));
  ex.RunStep();
  StepPlan p = ex.RunStep(T0(), /*drain_expired=*/true);
  EXPECT_TRUE(p.rows.empty());
  EXPECT_EQ(p.stopped.size(), 3u);
  for (auto& r : {a, b, c}) EXPECT_THAT(r->status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(kv.live(), 0u);

  auto d = MakeRequest("a", 2, 50), e = MakeRequest("b", 2, 50);
  ASSERT_OK(s.Submit(d, T0()));
  ASSERT_OK(s.Submit(e, T0()));
  ex.RunStep();
  auto all = s.TakeAll();
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_EQ(s.running(), 0);
  EXPECT_EQ(kv.live(), 0u);
}

// A random workload: every request ends exactly once and completely, batch and token limits and
// the KV budget always hold.
TEST(SchedulerTest, RandomWorkloadKeepsEveryInvariant) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    std::mt19937 rng(seed);
    FakeKv kv(/*budget=*/200);
    SchedulerOptions o = Options(/*batch=*/6, /*tokens=*/32);
    o.max_queue_per_adapter = 16;
    Scheduler s(o, &kv);
    FakeExecutor ex(&s, &kv);
    std::vector<std::shared_ptr<FakeRequest>> accepted;
    for (int step = 0; step < 300; ++step) {
      const int arrivals = step < 200 ? static_cast<int>(rng() % 3) : 0;
      for (int i = 0; i < arrivals; ++i) {
        auto r = MakeRequest(std::string(1, static_cast<char>('a' + rng() % 5)),
                             1 + static_cast<int64_t>(rng() % 40), 1 + static_cast<int64_t>(rng() % 30));
        if (rng() % 10 == 0) r->deadline = T0() + absl::Seconds(step + 5);
        if (s.Submit(r, T0()).ok()) accepted.push_back(r);
      }
      if (!accepted.empty() && rng() % 15 == 0) Scheduler::Cancel(*accepted[rng() % accepted.size()]);
      StepPlan p = ex.RunStep(T0() + absl::Seconds(step));
      ASSERT_LE(static_cast<int>(p.rows.size()), o.max_batch_size);
      ASSERT_LE(p.new_tokens, o.max_batch_tokens);
      ASSERT_LE(kv.bytes_reserved(), 200);
    }
    ex.Drain();
    for (auto& r : accepted) {
      ASSERT_EQ(r->times_done, 1) << "seed " << seed;
      if (r->status.ok()) {
        EXPECT_EQ(r->generated, r->want);
      } else {
        EXPECT_THAT(r->status.code(), ::testing::AnyOf(absl::StatusCode::kCancelled,
                                                       absl::StatusCode::kDeadlineExceeded));
      }
    }
    EXPECT_EQ(kv.live(), 0u);
    EXPECT_LE(kv.peak(), 200);
  }
}

}  // namespace
}  // namespace loraserve::core
