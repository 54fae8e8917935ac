// The continuous-batching engine on the real stories260K model with PEFT fixture adapters.
#include "core/engine/engine.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/engine/generate.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/tokenizer/tokenizer.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/peft_case.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::AllcloseExcess;
using ::loraserve::testing::IsOkAndHolds;
using ::loraserve::testing::LoadPeftCase;
using ::loraserve::testing::PeftCase;
using ::loraserve::testing::PeftDir;
using ::loraserve::testing::StatusIs;

std::string ModelDir() { return testing::SharedPath("fixtures/models/stories260K"); }

// Collects one request's outcome.
struct Outcome {
  absl::Notification done;
  absl::StatusOr<GenerationResult> result = absl::UnknownError("not finished");
  RequestStats stats;
  std::vector<TokenEvent> events;
  GenerateCallbacks Callbacks() {
    GenerateCallbacks cb;
    cb.on_token = [this](const TokenEvent& e) { events.push_back(e); };
    cb.on_done = [this](absl::StatusOr<GenerationResult> r, const RequestStats& s) {
      result = std::move(r);
      stats = s;
      done.Notify();
    };
    return cb;
  }
};

GenerateRequest Greedy(const std::string& adapter, std::vector<int32_t> prompt, int n) {
  GenerateRequest r;
  r.adapter = adapter;
  r.prompt_ids = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.max_new_tokens = n;
  r.sampling.stop_on_eos = false;
  return r;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    // Reference path: the single-sequence Generate() over the same model and adapters.
    ASSERT_OK_AND_ASSIGN(ref_model_, Model::Load(ModelDir(), ModelOptions()));
    ref_lora_ = std::make_unique<LoraModel>(ref_model_.get());
    ASSERT_OK_AND_ASSIGN(tokenizer_, Tokenizer::FromFile(ModelDir() + "/tokenizer.json"));
  }
  std::unique_ptr<Engine> Start(EngineOptions o = EngineOptions()) {
    o.model_dir = ModelDir();
    o.num_threads = 1;
    auto e = Engine::Create(o);
    EXPECT_OK(e.status());
    return e.ok() ? std::move(*e) : nullptr;
  }
  // Single-sequence greedy reference for `adapter_case` ("" = base).
  std::vector<int32_t> Reference(const std::string& adapter_case, const std::vector<int32_t>& prompt, int n) {
    std::shared_ptr<const LoraAdapter> a;
    if (!adapter_case.empty()) {
      a = *LoraAdapter::Load(adapter_case, PeftDir(adapter_case) + "/adapter", *ref_model_,
                             ref_lora_->BaseWeightFn(), AdapterLoadOptions());
    }
    HooksFactory hooks = [&](absl::Span<const SequenceInput> batch) { return ref_lora_->MakeHooks(batch, {a}); };
    auto r = Generate(*ref_model_, *tokenizer_, prompt, Greedy("", prompt, n).sampling, hooks);
    EXPECT_OK(r.status());
    return r.ok() ? r->tokens : std::vector<int32_t>();
  }
  std::unique_ptr<Model> ref_model_;
  std::unique_ptr<LoraModel> ref_lora_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

const std::vector<std::string> kAdapters = {"qv_r4", "qv_r4_b", "dora_qv", "embed_lora",
                                            "modules_to_save_head", "lora_bias", "patterns"};

TEST_F(EngineTest, ConcurrentMixedAdapterRequestsShareBatchesAndMatchSingleRuns) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  EXPECT_TRUE(engine->stats().ready);
  for (const auto& a : kAdapters) ASSERT_OK(engine->LoadAdapter(a, PeftDir(a) + "/adapter").status());
  PeftCase c = LoadPeftCase("qv_r4");
  std::vector<std::unique_ptr<Outcome>> outs;
  std::vector<std::string> names = kAdapters;
  names.push_back("");  // base rows too
  for (size_t i = 0; i < names.size(); ++i) {
    outs.push_back(std::make_unique<Outcome>());
    ASSERT_OK(engine->SubmitGenerate(Greedy(names[i], c.prompts[i % 3], 12), outs.back()->Callbacks()).status());
  }
  for (size_t i = 0; i < names.size(); ++i) {
    outs[i]->done.WaitForNotification();
    ASSERT_OK(outs[i]->result.status()) << names[i];
    EXPECT_EQ(outs[i]->result->tokens, Reference(names[i], c.prompts[i % 3], 12)) << names[i];
    EXPECT_EQ(outs[i]->events.size(), 12u);
    std::string text;
    for (const auto& e : outs[i]->events) text += e.text;
    EXPECT_EQ(text, outs[i]->result->text);
    EXPECT_EQ(outs[i]->stats.completion_tokens, 12);
  }
  const EngineStats s = engine->stats();
  EXPECT_GT(s.multi_adapter_steps, 0);
  EXPECT_EQ(s.tokens_out, 12 * static_cast<int64_t>(names.size()));
  EXPECT_EQ(s.kv_bytes_reserved, 0);
}

TEST_F(EngineTest, GreedyFromBosMatchesReferenceAndScoreMatchesPeft) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  ASSERT_OK(engine->LoadAdapter("dora", PeftDir("dora_qv") + "/adapter").status());
  Outcome out;
  ASSERT_OK(engine->SubmitGenerate(Greedy("", {1}, 60), out.Callbacks()).status());
  out.done.WaitForNotification();
  ASSERT_OK(out.result.status());
  EXPECT_EQ(out.result->tokens, Reference("", {1}, 60));
  PeftCase c = LoadPeftCase("dora_qv");
  absl::Notification scored;
  absl::StatusOr<ScoreResult> score;
  ScoreRequest req;
  req.adapter = "dora";
  req.token_ids = c.prompts[2];
  req.full_logits = true;
  req.top_logprobs = 3;
  engine->SubmitScore(req, [&](absl::StatusOr<ScoreResult> r) {
    score = std::move(r);
    scored.Notify();
  });
  scored.WaitForNotification();
  ASSERT_OK(score.status());
  at::Tensor logits = at::from_blob(score->logits.data(), {score->num_tokens, score->vocab_size}, at::kFloat);
  EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.adapter.p2")), c.atol);
  ASSERT_EQ(score->token_logprobs.size(), c.prompts[2].size() - 1);
  at::Tensor logp = at::log_softmax(c.expected.at("logits.adapter.p2"), -1);
  EXPECT_NEAR(score->token_logprobs[0], logp[0][c.prompts[2][1]].item<float>(), 1e-4);
  ASSERT_EQ(score->top.size(), c.prompts[2].size());
  EXPECT_EQ(score->top[0][0].id, logp[0].argmax().item<int64_t>());
}

TEST_F(EngineTest, MergeAndDeleteRaceWithInference) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  ASSERT_OK(engine->LoadAdapter("a", PeftDir("qv_r4") + "/adapter").status());
  ASSERT_OK(engine->LoadAdapter("b", PeftDir("qv_r4_b") + "/adapter").status());
  PeftCase c = LoadPeftCase("qv_r4");
  const auto want_a = Reference("qv_r4", c.prompts[0], 30);
  const auto want_b = Reference("qv_r4_b", c.prompts[1], 30);
  const auto want_base = Reference("", c.prompts[2], 30);
  Outcome oa, ob, obase;
  ASSERT_OK(engine->SubmitGenerate(Greedy("a", c.prompts[0], 30), oa.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("b", c.prompts[1], 30), ob.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("", c.prompts[2], 30), obase.Callbacks()).status());
  // Merge a while they run; delete b while it runs (its request must finish normally).
  absl::Notification merged;
  engine->MergeAdapter("a", [&](absl::StatusOr<bool> r) {
    EXPECT_OK(r.status());
    EXPECT_TRUE(*r);
    merged.Notify();
  });
  ASSERT_OK(engine->DeleteAdapter("b"));
  merged.WaitForNotification();
  EXPECT_THAT(engine->DeleteAdapter("a"), StatusIs(absl::StatusCode::kFailedPrecondition));
  for (Outcome* o : {&oa, &ob, &obase}) {
    o->done.WaitForNotification();
    ASSERT_OK(o->result.status());
  }
  EXPECT_EQ(oa.result->tokens, want_a);
  EXPECT_EQ(ob.result->tokens, want_b);
  EXPECT_EQ(obase.result->tokens, want_base);
  ASSERT_OK_AND_ASSIGN(AdapterInfo info, engine->GetAdapter("a"));
  EXPECT_TRUE(info.pinned);
  absl::Notification again;
  engine->MergeAdapter("a", [&](absl::StatusOr<bool> r) {
    EXPECT_OK(r.status());
    EXPECT_FALSE(*r);  // already merged: a no-op that says so
    again.Notify();
  });
  again.WaitForNotification();
  absl::Notification unmerged;
  engine->UnmergeAdapter("a", [&](absl::Status s) {
    EXPECT_OK(s);
    unmerged.Notify();
  });
  unmerged.WaitForNotification();
  ASSERT_OK(engine->DeleteAdapter("a"));
  Outcome unknown;
  EXPECT_THAT(engine->SubmitGenerate(Greedy("b", c.prompts[0], 3), unknown.Callbacks()),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(EngineTest, FullQueueCancellationAndDeadlines) {
  EngineOptions o;
  o.max_batch_size = 1;
  o.max_queue = 2;
  o.max_wait = absl::ZeroDuration();
  auto engine = Start(o);
  ASSERT_NE(engine, nullptr);
  // The first request cancels itself after 3 tokens; the queue holds at most 2 more.
  Outcome first;
  std::shared_ptr<RequestHandle> handle;
  absl::Mutex mu;
  GenerateCallbacks cb = first.Callbacks();
  auto on_token = cb.on_token;
  absl::Notification started;
  cb.on_token = [&, on_token](const TokenEvent& e) {
    on_token(e);
    if (e.index == 0) started.Notify();
    absl::MutexLock lock(&mu);
    if (e.index == 2 && handle) handle->Cancel();
  };
  {
    absl::MutexLock lock(&mu);
    ASSERT_OK_AND_ASSIGN(handle, engine->SubmitGenerate(Greedy("", {1}, 400), cb));
  }
  started.WaitForNotification();  // running, so the queue is empty again
  Outcome q1, q2, q3;
  GenerateRequest late = Greedy("", {1}, 5);
  late.deadline = absl::Now() - absl::Seconds(1);
  ASSERT_OK(engine->SubmitGenerate(late, q1.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("", {1}, 5), q2.Callbacks()).status());
  auto rejected = engine->SubmitGenerate(Greedy("", {1}, 5), q3.Callbacks());
  if (!rejected.ok()) {
    EXPECT_THAT(rejected, StatusIs(absl::StatusCode::kResourceExhausted));
  }
  first.done.WaitForNotification();
  EXPECT_THAT(first.result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_GE(first.events.size(), 3u);
  EXPECT_LT(first.events.size(), 400u);
  q1.done.WaitForNotification();
  EXPECT_THAT(q1.result, StatusIs(absl::StatusCode::kDeadlineExceeded));
  q2.done.WaitForNotification();
  EXPECT_OK(q2.result.status());
  if (rejected.ok()) q3.done.WaitForNotification();
  // A queue that is really full: stop the engine thread from draining by filling it faster.
  int exhausted = 0;
  std::vector<std::unique_ptr<Outcome>> many;
  for (int i = 0; i < 20; ++i) {
    many.push_back(std::make_unique<Outcome>());
    auto r = engine->SubmitGenerate(Greedy("", {1}, 50), many.back()->Callbacks());
    if (!r.ok()) {
      EXPECT_THAT(r, StatusIs(absl::StatusCode::kResourceExhausted));
      ++exhausted;
      many.pop_back();
    }
  }
  EXPECT_GT(exhausted, 0);
  for (auto& m : many) m->done.WaitForNotification();
}

TEST_F(EngineTest, KvBudgetPreemptsAndStillAnswersCorrectly) {
  EngineOptions o;
  // Room for about 100 tokens of KV in all: three 60-token generations cannot all fit at once.
  o.kv_budget_bytes = 100 * 5 * 2 * 4 * 8 * 4;
  o.max_wait = absl::Milliseconds(20);
  auto engine = Start(o);
  ASSERT_NE(engine, nullptr);
  ASSERT_OK(engine->LoadAdapter("a", PeftDir("qv_r4") + "/adapter").status());
  PeftCase c = LoadPeftCase("qv_r4");
  std::vector<std::unique_ptr<Outcome>> outs;
  for (int i = 0; i < 3; ++i) {
    outs.push_back(std::make_unique<Outcome>());
    ASSERT_OK(engine->SubmitGenerate(Greedy(i == 1 ? "a" : "", c.prompts[i], 40), outs.back()->Callbacks()).status());
  }
  for (int i = 0; i < 3; ++i) {
    outs[i]->done.WaitForNotification();
    ASSERT_OK(outs[i]->result.status());
    EXPECT_EQ(outs[i]->result->tokens, Reference(i == 1 ? "qv_r4" : "", c.prompts[i], 40)) << i;
  }
  EXPECT_LE(engine->stats().kv_bytes_reserved, o.kv_budget_bytes);
  EXPECT_GT(engine->stats().preemptions, 0);
}

TEST_F(EngineTest, SingleAdapterPolicyAndShutdownDrains) {
  EngineOptions o;
  o.policy = BatchPolicy::kSingleAdapter;
  auto engine = Start(o);
  ASSERT_NE(engine, nullptr);
  ASSERT_OK(engine->LoadAdapter("a", PeftDir("qv_r4") + "/adapter").status());
  PeftCase c = LoadPeftCase("qv_r4");
  Outcome x, y;
  ASSERT_OK(engine->SubmitGenerate(Greedy("a", c.prompts[0], 10), x.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("", c.prompts[1], 10), y.Callbacks()).status());
  engine->Shutdown(absl::Now() + absl::Seconds(30));  // drains: both finish
  ASSERT_OK(x.result.status());
  ASSERT_OK(y.result.status());
  EXPECT_EQ(x.result->tokens, Reference("qv_r4", c.prompts[0], 10));
  EXPECT_EQ(y.result->tokens, Reference("", c.prompts[1], 10));
  EXPECT_EQ(engine->stats().multi_adapter_steps, 0);
  Outcome z;
  EXPECT_THAT(engine->SubmitGenerate(Greedy("", {1}, 3), z.Callbacks()), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(engine->stats().running, 0);
  EXPECT_EQ(engine->stats().kv_bytes_reserved, 0);
  // Work that would need the (stopped) engine thread is answered at once, never left hanging.
  absl::Notification merge_done, score_done;
  engine->MergeAdapter("a", [&](absl::StatusOr<bool> r) {
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
    merge_done.Notify();
  });
  ScoreRequest req;
  req.token_ids = {1, 2};
  engine->SubmitScore(req, [&](absl::StatusOr<ScoreResult> r) {
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
    score_done.Notify();
  });
  EXPECT_TRUE(merge_done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(score_done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // So is work for the (stopped) worker thread.
  int unavailable = 0;
  engine->CombineAdapters("c", {"a"}, CombineOptions(), [&](absl::StatusOr<AdapterInfo> r) {
    unavailable += r.status().code() == absl::StatusCode::kUnavailable;
  });
  const std::string dir = testing::MakeTempDir();
  engine->SaveAdapter("a", dir, [&](absl::Status st) {
    unavailable += st.code() == absl::StatusCode::kUnavailable;
  });
  engine->ExportMergedModel({"a"}, dir, [&](absl::Status st) {
    unavailable += st.code() == absl::StatusCode::kUnavailable;
  });
  EXPECT_EQ(unavailable, 3);
  // Shutdown again, from several threads at once: all return, nothing breaks.
  std::vector<std::thread> again;
  for (int i = 0; i < 4; ++i) again.emplace_back([&] { engine->Shutdown(absl::Now()); });
  for (auto& t : again) t.join();
}

TEST_F(EngineTest, CombineSaveExportAndUnloadAll) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  ASSERT_OK(engine->LoadAdapter("qv_r4", PeftDir("qv_r4") + "/adapter").status());
  ASSERT_OK(engine->LoadAdapter("qv_r4_b", PeftDir("qv_r4_b") + "/adapter").status());
  CombineOptions co;
  co.type = CombinationType::kCat;
  co.weights = {0.7, 0.3};
  absl::Notification combined;
  engine->CombineAdapters("cat", {"qv_r4", "qv_r4_b"}, co, [&](absl::StatusOr<AdapterInfo> r) {
    EXPECT_OK(r.status());
    combined.Notify();
  });
  combined.WaitForNotification();
  PeftCase cc = LoadPeftCase("multi/weighted/cat_w07_03");
  absl::Notification scored;
  ScoreRequest req;
  req.adapter = "cat";
  req.token_ids = cc.prompts[0];
  req.full_logits = true;
  engine->SubmitScore(req, [&](absl::StatusOr<ScoreResult> r) {
    ASSERT_OK(r.status());
    at::Tensor logits = at::from_blob(r->logits.data(), {r->num_tokens, r->vocab_size}, at::kFloat);
    EXPECT_LE(AllcloseExcess(logits, cc.expected.at("logits.p0")), cc.atol);
    scored.Notify();
  });
  scored.WaitForNotification();
  const std::string save_dir = testing::MakeTempDir(), export_dir = testing::MakeTempDir();
  absl::Notification saved, exported;
  engine->SaveAdapter("cat", save_dir, [&](absl::Status s) {
    EXPECT_OK(s);
    saved.Notify();
  });
  engine->ExportMergedModel({"qv_r4"}, export_dir, [&](absl::Status s) {
    EXPECT_OK(s);
    exported.Notify();
  });
  saved.WaitForNotification();
  exported.WaitForNotification();
  ASSERT_OK_AND_ASSIGN(auto plain, Model::Load(export_dir, ModelOptions()));
  PeftCase c = LoadPeftCase("qv_r4");
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, plain->Score(c.prompts[0]));
  EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.adapter.p0")), c.atol);
  absl::Notification not_empty;
  engine->SaveAdapter("cat", save_dir, [&](absl::Status s) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition));
    not_empty.Notify();
  });
  not_empty.WaitForNotification();
  absl::Notification unloaded;
  engine->UnloadAll([&](absl::Status s) {
    EXPECT_OK(s);
    unloaded.Notify();
  });
  unloaded.WaitForNotification();
  EXPECT_TRUE(engine->ListAdapters().empty());
}

// The count of requests waiting for loads drops once the loader has handed out its result (just
// after the requests' callbacks ran): wait for it.
bool LoadWaitingDrains(Engine& engine) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (engine.stats().adapter_load_waiting != 0) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// Registered-only adapters load on first use on the loader threads: the requests of one adapter
// share its load, get the same tokens as with an eagerly loaded adapter, and a load that hangs
// holds up only its own adapter's requests.
TEST_F(EngineTest, RegisteredAdaptersLoadOnFirstUseOffTheEngineThread) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  PeftCase c = LoadPeftCase("qv_r4");
  ASSERT_OK_AND_ASSIGN(AdapterInfo reg, engine->LoadAdapter("lazy", PeftDir("qv_r4") + "/adapter", /*register_only=*/true));
  EXPECT_FALSE(reg.resident);
  EXPECT_TRUE(reg.registered_only);
  EXPECT_GT(reg.bytes, 0);
  EXPECT_EQ(engine->stats().adapter_bytes_resident, 0);
  EXPECT_EQ(engine->stats().adapters.not_loaded, 1);
  const auto want = Reference("qv_r4", c.prompts[0], 12);
  std::vector<std::unique_ptr<Outcome>> outs;
  for (int i = 0; i < 6; ++i) {
    outs.push_back(std::make_unique<Outcome>());
    ASSERT_OK(engine->SubmitGenerate(Greedy("lazy", c.prompts[0], 12), outs.back()->Callbacks()).status());
  }
  for (auto& o : outs) {
    o->done.WaitForNotification();
    ASSERT_OK(o->result.status());
    EXPECT_EQ(o->result->tokens, want);
  }
  EXPECT_TRUE(LoadWaitingDrains(*engine));
  EngineStats st = engine->stats();
  EXPECT_EQ(st.adapter_loads, 1);  // six requests, one load
  EXPECT_GE(st.adapter_misses, 1);
  EXPECT_LE(st.adapter_misses, 6);
  EXPECT_GT(st.adapter_load_seconds, 0);
  EXPECT_EQ(st.adapters.resident, 1);
  ASSERT_OK_AND_ASSIGN(AdapterInfo now, engine->GetAdapter("lazy"));
  EXPECT_TRUE(now.resident);
  EXPECT_FALSE(now.registered_only);

  // A Score of a registered-only adapter equals the eagerly loaded adapter's.
  ASSERT_OK(engine->LoadAdapter("lazy2", PeftDir("qv_r4") + "/adapter", true).status());
  auto score = [&](const std::string& adapter) {
    ScoreRequest req;
    req.adapter = adapter;
    req.token_ids = c.prompts[1];
    req.full_logits = true;
    absl::Notification done;
    absl::StatusOr<ScoreResult> out = absl::UnknownError("not run");
    engine->SubmitScore(req, [&](absl::StatusOr<ScoreResult> r) {
      out = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  };
  ASSERT_OK_AND_ASSIGN(ScoreResult lazy_score, score("lazy2"));
  ASSERT_OK_AND_ASSIGN(ScoreResult eager_score, score("lazy"));
  EXPECT_EQ(lazy_score.logits, eager_score.logits);
  EXPECT_FALSE(lazy_score.logits.empty());
  EXPECT_EQ(engine->stats().adapter_loads, 2);

  // A load that hangs (its weights file replaced by a FIFO nobody writes yet) holds up only its
  // own requests; the base and a resident adapter keep running; the hung one then fails cleanly.
  const std::string dir = ::testing::TempDir() + "/hanging_adapter";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) {
    std::filesystem::copy_file(PeftDir("qv_r4") + "/adapter/" + f, dir + "/" + f);
  }
  ASSERT_OK(engine->LoadAdapter("hangs", dir, true).status());
  std::filesystem::remove(dir + "/adapter_model.safetensors");
  ASSERT_EQ(::mkfifo((dir + "/adapter_model.safetensors").c_str(), 0600), 0);
  Outcome hung, base, other;
  ASSERT_OK(engine->SubmitGenerate(Greedy("hangs", c.prompts[0], 5), hung.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("", c.prompts[1], 5), base.Callbacks()).status());
  ASSERT_OK(engine->SubmitGenerate(Greedy("lazy", c.prompts[2], 5), other.Callbacks()).status());
  base.done.WaitForNotification();
  other.done.WaitForNotification();
  EXPECT_OK(base.result.status());
  EXPECT_OK(other.result.status());
  EXPECT_FALSE(hung.done.HasBeenNotified());
  EXPECT_EQ(engine->stats().adapter_load_waiting, 1);
  {
    // Unblock the loader: it reads an empty "file" and refuses it.
    const int fd = ::open((dir + "/adapter_model.safetensors").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ::close(fd);
  }
  hung.done.WaitForNotification();
  EXPECT_FALSE(hung.result.ok());
  EXPECT_THAT(hung.result.status().message(), ::testing::HasSubstr("hangs"));
  EXPECT_TRUE(LoadWaitingDrains(*engine));
  engine->Shutdown(absl::Now() + absl::Seconds(5));
}

// Under a budget that holds one adapter, alternating between two registered adapters evicts and
// reloads every time and the answers stay the same bit for bit.
TEST_F(EngineTest, TinyAdapterBudgetReloadsOnEveryAlternation) {
  EngineOptions o;
  o.adapters.budget_bytes = 1;  // one resident adapter at a time (the one in use)
  auto engine = Start(o);
  ASSERT_NE(engine, nullptr);
  PeftCase c = LoadPeftCase("qv_r4");
  ASSERT_OK(engine->LoadAdapter("a", PeftDir("qv_r4") + "/adapter", true).status());
  ASSERT_OK(engine->LoadAdapter("b", PeftDir("qv_r4_b") + "/adapter", true).status());
  const auto want_a = Reference("qv_r4", c.prompts[0], 6);
  const auto want_b = Reference("qv_r4_b", c.prompts[0], 6);
  for (int i = 0; i < 6; ++i) {
    Outcome o1;
    const bool is_a = i % 2 == 0;
    ASSERT_OK(engine->SubmitGenerate(Greedy(is_a ? "a" : "b", c.prompts[0], 6), o1.Callbacks()).status());
    o1.done.WaitForNotification();
    ASSERT_OK(o1.result.status());
    EXPECT_EQ(o1.result->tokens, is_a ? want_a : want_b) << i;
  }
  EngineStats st = engine->stats();
  EXPECT_EQ(st.adapter_loads, 6);
  EXPECT_GE(st.adapter_evictions, 5);
  EXPECT_EQ(st.adapters.resident + st.adapters.evicted + st.adapters.not_loaded, 2);
  EXPECT_LE(st.adapters.resident, 1);
}

// Device and dtype validation runs before the model loads, so no model is needed.
// Issue 13 item 8: on an idle engine a short base Score runs on the caller's thread (no hand-off
// to the engine thread); while a Generate is in flight it is queued between steps as before. Both
// give the same result bit for bit, and PEFT's base logits.
TEST_F(EngineTest, IdleScoreRunsOnTheCallersThreadAndBusyScoreBetweenSteps) {
  auto engine = Start();
  ASSERT_NE(engine, nullptr);
  PeftCase c = LoadPeftCase("qv_r4");
  ScoreRequest req;
  req.token_ids = c.prompts[1];
  req.full_logits = true;
  req.top_logprobs = 2;
  auto score = [&](std::thread::id* thread) {
    absl::Notification done;
    absl::StatusOr<ScoreResult> out;
    engine->SubmitScore(req, [&](absl::StatusOr<ScoreResult> r) {
      *thread = std::this_thread::get_id();
      out = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  };
  std::thread::id idle_thread, busy_thread;
  ASSERT_OK_AND_ASSIGN(ScoreResult idle, score(&idle_thread));
  EXPECT_EQ(idle_thread, std::this_thread::get_id());
  at::Tensor logits = at::from_blob(idle.logits.data(), {idle.num_tokens, idle.vocab_size}, at::kFloat);
  EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.base.p1")), c.atol);
  at::Tensor logp = at::log_softmax(c.expected.at("logits.base.p1"), -1);
  for (size_t t = 0; t + 1 < req.token_ids.size(); ++t) {
    EXPECT_NEAR(idle.token_logprobs[t], logp[t][req.token_ids[t + 1]].item<float>(), 1e-4) << t;
  }
  auto [values, indices] = at::topk(logp, 2, -1);
  for (int64_t t = 0; t < idle.num_tokens; ++t) {
    ASSERT_EQ(idle.top[t].size(), 2u);
    EXPECT_EQ(idle.top[t][0].id, indices[t][0].item<int64_t>()) << t;
    EXPECT_NEAR(idle.top[t][0].logprob, values[t][0].item<float>(), 1e-4) << t;
  }
  // A long generation keeps the engine busy: the Score waits for a step boundary.
  Outcome gen;
  auto greedy = Greedy("", {1}, 400);
  ASSERT_OK(engine->SubmitGenerate(greedy, gen.Callbacks()).status());
  while (engine->stats().running == 0 && !gen.done.HasBeenNotified()) absl::SleepFor(absl::Microseconds(100));
  ASSERT_FALSE(gen.done.HasBeenNotified());
  ASSERT_OK_AND_ASSIGN(ScoreResult busy, score(&busy_thread));
  EXPECT_NE(busy_thread, std::this_thread::get_id());
  EXPECT_EQ(busy.logits, idle.logits);
  EXPECT_EQ(busy.token_logprobs, idle.token_logprobs);
  gen.done.WaitForNotification();
  ASSERT_OK(gen.result.status());
  EXPECT_EQ(gen.result->tokens, Reference("", {1}, 400));
}

TEST(ResolveDeviceTest, CpuNamesAndMalformedNames) {
  EXPECT_THAT(ResolveDevice("cpu"), IsOkAndHolds(std::string("cpu")));
  EXPECT_THAT(ResolveDevice("cpu:0"), IsOkAndHolds(std::string("cpu")));
  EXPECT_THAT(ResolveDevice("gpu"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("\"gpu\" is not a device name")));
  EXPECT_THAT(ResolveDevice("cuda:x"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ResolveDevice(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ResolveDevice("cpu:1"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("no index")));
  EXPECT_THAT(ResolveDevice("meta"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("not supported")));
}

TEST(ResolveDeviceTest, CudaNeedsTheCudaFlavourAndAVisibleGpu) {
#ifndef LORASERVE_WITH_CUDA
  EXPECT_THAT(ResolveDevice("cuda"), StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::HasSubstr("make build-cuda")));
  EXPECT_THAT(ResolveDevice("cuda:3"), StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::HasSubstr("make build-cuda")));
#else
  const int visible = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  if (visible == 0) {
    EXPECT_THAT(ResolveDevice("cuda"), StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::HasSubstr("no CUDA GPU is visible")));
  } else {
    EXPECT_THAT(ResolveDevice("cuda"), IsOkAndHolds(std::string("cuda:0")));
    EXPECT_THAT(ResolveDevice(absl::StrCat("cuda:", visible - 1)), IsOkAndHolds(absl::StrCat("cuda:", visible - 1)));
    EXPECT_THAT(ResolveDevice(absl::StrCat("cuda:", visible)), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("visible")));
  }
#endif
}

TEST(EngineOptionsTest, BadDeviceAndDtypeFailCreateBeforeLoading) {
  EngineOptions o;
  o.model_dir = "/nonexistent-model";
  o.device = "tpu";
  EXPECT_THAT(Engine::Create(o), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("tpu")));
  o.device = "cpu";
  o.dtype = "float16";
  EXPECT_THAT(Engine::Create(o), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("CUDA devices only")));
  o.dtype = "int8";
  EXPECT_THAT(Engine::Create(o), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("unsupported dtype")));
  o.dtype = "float32";
  o.adapters.load.dtype = "int4";
  EXPECT_THAT(Engine::Create(o), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("unsupported adapter dtype")));
  o.adapters.load.dtype = "float32";
  o.adapter_load_threads = 0;
  EXPECT_THAT(Engine::Create(o), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("adapter_load_threads")));
}

}  // namespace
}  // namespace loraserve::core
