// InferenceService over loopback with the real client library and the stories260K engine:
// Generate / Score / Tokenize / Detokenize success and error paths, deadlines, cancellation, a full
// queue, and requests of different adapters sharing batches. Truth comes from the PEFT fixtures,
// the tokenizer fixtures, and Score as a second code path for Generate.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::testing::AllcloseExcess;
using ::loraserve::testing::FixturePrompts;
using ::loraserve::testing::FixtureTensor;
using ::loraserve::testing::StatusIs;
using ::loraserve::testing::TestServer;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr double kLogitsAtol = 1e-4;

// The prompt of qv_r4's first fixture case: "Tom had a big red ball and he" (BOS first).
std::vector<int32_t> Prompt() { return FixturePrompts("qv_r4").at(0); }

GenerateRequest Greedy(const std::string& adapter, std::vector<int32_t> ids, int max_new_tokens) {
  GenerateRequest r;
  r.adapter = adapter;
  r.token_ids = std::move(ids);
  r.sampling.temperature = 0;
  r.sampling.max_new_tokens = max_new_tokens;
  r.sampling.ignore_eos = true;
  r.sampling.logprobs = true;
  return r;
}

std::vector<int32_t> Ids(const GenerateResult& r) {
  std::vector<int32_t> ids;
  for (const auto& t : r.tokens) ids.push_back(t.id);
  return ids;
}

// Waits until `pred` holds (polling), false after `timeout`.
template <typename Pred>
bool Eventually(Pred pred, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return pred();
}

class InferenceServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    auto options = TestServer::DefaultOptions();
    ModifyOptions(&options);
    auto t = TestServer::Start(options);
    ASSERT_TRUE(t.ok()) << t.status();
    env_ = *std::move(t);
  }
  virtual void ModifyOptions(testing::TestServerOptions* /*options*/) {}
  Client& client() { return env_->client(); }

  std::unique_ptr<TestServer> env_;
};

TEST_F(InferenceServiceTest, GreedyGenerateStreamsTokensThatScoreConfirms) {
  const std::vector<int32_t> prompt = Prompt();
  std::vector<GeneratedToken> streamed;
  CallInfo info;
  CallOptions call;
  call.info = &info;
  ASSERT_OK_AND_ASSIGN(GenerateResult r,
                       client().Generate(Greedy("", prompt, 24),
                                         [&](const GeneratedToken& t) {
                                           streamed.push_back(t);
                                           return true;
                                         },
                                         call));
  ASSERT_EQ(r.tokens.size(), 24u);
  EXPECT_EQ(streamed.size(), r.tokens.size());
  EXPECT_EQ(r.completion_tokens, 24);
  EXPECT_EQ(r.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_FALSE(info.request_id.empty());
  std::string text;
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    EXPECT_EQ(r.tokens[i].index, static_cast<int32_t>(i));
    text += r.tokens[i].text;
  }
  EXPECT_EQ(text, r.text);
  EXPECT_FALSE(r.text.empty());

  // Second code path: one Score forward over prompt + generated tokens. Each greedy token is the
  // argmax of the logits before it, and its logprob is log_softmax there.
  ScoreRequest s;
  s.token_ids = prompt;
  for (int32_t id : Ids(r)) s.token_ids.push_back(id);
  s.full_logits = true;
  ASSERT_OK_AND_ASSIGN(ScoreResult score, client().Score(s));
  ASSERT_EQ(score.vocab_size, 512);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const size_t row = prompt.size() - 1 + i;
    const float* logits = score.logits.data() + row * 512;
    const int32_t argmax = static_cast<int32_t>(std::max_element(logits, logits + 512) - logits);
    EXPECT_EQ(r.tokens[i].id, argmax) << "token " << i;
    EXPECT_NEAR(r.tokens[i].logprob, score.token_logprobs[row], 1e-4) << "token " << i;
  }
  // The access log has one line for the call, with its request id and token counts.
  EXPECT_EQ(env_->logs()
                .Matching({"access", "rid=" + info.request_id, "rpc=Generate", "code=OK",
                           absl::StrCat("tokens_in=", prompt.size()), "tokens_out=24"})
                .size(),
            1u);
}

TEST_F(InferenceServiceTest, TextPromptSeedStopStringsAndTopLogprobs) {
  GenerateRequest r;
  r.text = "Tom had a big red ball and he";
  r.sampling.seed = 1234;
  r.sampling.max_new_tokens = 30;
  r.sampling.ignore_eos = true;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 3;
  ASSERT_OK_AND_ASSIGN(GenerateResult a, client().Generate(r));
  ASSERT_OK_AND_ASSIGN(GenerateResult b, client().Generate(r));
  EXPECT_EQ(Ids(a), Ids(b)) << "same seed, same tokens";
  EXPECT_EQ(a.seed, 1234u);
  EXPECT_EQ(a.prompt_tokens, static_cast<int64_t>(Prompt().size()));
  for (const auto& t : a.tokens) {
    ASSERT_EQ(t.top_logprobs.size(), 3u);
    EXPECT_GE(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob);
    EXPECT_GE(t.top_logprobs[0].logprob, t.logprob);
  }

  // A stop string taken from the middle of the greedy text ends generation there.
  ASSERT_OK_AND_ASSIGN(GenerateResult full, client().Generate(Greedy("", Prompt(), 40)));
  const size_t space = full.text.find(' ', full.text.size() / 2);
  ASSERT_NE(space, std::string::npos) << full.text;
  const std::string stop = full.text.substr(space, 4);
  GenerateRequest with_stop = Greedy("", Prompt(), 40);
  with_stop.sampling.stop = {stop};
  ASSERT_OK_AND_ASSIGN(GenerateResult cut, client().Generate(with_stop));
  EXPECT_EQ(cut.finish_reason, FinishReason::kStop);
  EXPECT_EQ(cut.stop_string, stop);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
}

TEST_F(InferenceServiceTest, GenerateErrors) {
  GenerateRequest r = Greedy("", Prompt(), 4);
  r.adapter = "no_such_adapter";
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kNotFound));
  r.adapter = "bad/name";
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapter")));
  r = Greedy("", Prompt(), 4);
  r.text = "both";
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one")));
  r = Greedy("", {}, 4);
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument));
  r = Greedy("", {1, 512}, 4);
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocabulary")));
  r = Greedy("", Prompt(), 4);
  r.sampling.temperature = -1;
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("temperature")));
  r = Greedy("", Prompt(), 4);
  r.sampling.logprobs = false;
  r.sampling.top_logprobs = 2;
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("logprobs")));
  r = Greedy("", std::vector<int32_t>(600, 5), 4);  // longer than the 512-token context
  EXPECT_THAT(client().Generate(r), StatusIs(absl::StatusCode::kInvalidArgument));
  // Every failure has its access line with the code, and the engine ran nothing.
  EXPECT_EQ(env_->logs().Matching({"rpc=Generate", "code=INVALID_ARGUMENT"}).size(), 7u);
  EXPECT_EQ(env_->logs().Matching({"rpc=Generate", "code=NOT_FOUND"}).size(), 1u);
  EXPECT_EQ(env_->engine().stats().tokens_out, 0);
}

TEST_F(InferenceServiceTest, ScoreMatchesPeftFixturesForBaseAndAdapter) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  const auto prompts = FixturePrompts("qv_r4");
  ASSERT_FALSE(prompts.empty());
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (const std::string adapter : {"", "qv_r4"}) {
      ScoreRequest s;
      s.adapter = adapter;
      s.token_ids = prompts[i];
      s.full_logits = true;
      ASSERT_OK_AND_ASSIGN(ScoreResult r, client().Score(s));
      EXPECT_EQ(r.num_tokens, static_cast<int64_t>(prompts[i].size()));
      const std::vector<float> expected = FixtureTensor(
          "qv_r4", absl::StrCat(adapter.empty() ? "logits.base.p" : "logits.adapter.p", i));
      EXPECT_LE(AllcloseExcess(r.logits, expected), kLogitsAtol) << "prompt " << i << " " << adapter;
    }
  }
  ScoreRequest s;
  s.adapter = "missing";
  s.token_ids = prompts[0];
  EXPECT_THAT(client().Score(s), StatusIs(absl::StatusCode::kNotFound));
  s.adapter = "";
  s.token_ids = {};
  EXPECT_THAT(client().Score(s), StatusIs(absl::StatusCode::kInvalidArgument));
  s.token_ids = {1, -3};
  EXPECT_THAT(client().Score(s), StatusIs(absl::StatusCode::kInvalidArgument));
  s.token_ids = prompts[0];
  s.top_logprobs = 21;
  EXPECT_THAT(client().Score(s), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_logprobs")));
}

TEST_F(InferenceServiceTest, TokenizeAndDetokenizeMatchTheFixtureEncoding) {
  // expected.json: "Tom had a big red ball and he" encodes to exactly these ids (BOS first).
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       client().Tokenize("Tom had a big red ball and he", /*add_special_tokens=*/true));
  EXPECT_EQ(ids, Prompt());
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> no_bos,
                       client().Tokenize("Tom had a big red ball and he", false));
  const std::vector<int32_t> prompt = Prompt();
  EXPECT_EQ(no_bos, std::vector<int32_t>(prompt.begin() + 1, prompt.end()));
  ASSERT_OK_AND_ASSIGN(std::string text, client().Detokenize(Prompt(), /*skip_special_tokens=*/true));
  EXPECT_EQ(text, "Tom had a big red ball and he");
  // Special-token text is plain text unless parse_special.
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> plain, client().Tokenize("</s>", false, false));
  EXPECT_THAT(plain, Not(::testing::Contains(2)));
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> special, client().Tokenize("</s>", false, true));
  EXPECT_EQ(special, std::vector<int32_t>{2});
  EXPECT_THAT(client().Detokenize({1, 99999}), StatusIs(absl::StatusCode::kInvalidArgument));
  // Per-token texts in one call: each equals that id detokenized alone, and together (after BOS)
  // they spell the prompt (a piece decoded alone loses its leading "▁" space, as in HF).
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> pieces, client().TokenTexts(prompt));
  ASSERT_EQ(pieces.size(), prompt.size());
  std::string joined;
  for (size_t i = 0; i < prompt.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(std::string alone, client().Detokenize({prompt[i]}));
    EXPECT_EQ(pieces[i], alone) << "token " << prompt[i];
    if (i > 0) joined += pieces[i];
  }
  EXPECT_EQ(joined, "Tomhadabigredballandhe");
  EXPECT_THAT(client().TokenTexts({1, 99999}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(InferenceServiceTest, ClientDeadlineStopsTheEngineWork) {
  // Hold the engine after the request's first step so its deadline passes while it runs.
  env_->engine().PauseAfterNextStep();
  GenerateRequest r = Greedy("", Prompt(), 400);
  CallOptions call;
  call.timeout = absl::Milliseconds(300);
  call.request_id = "deadline-test";
  auto result = std::async(std::launch::async, [&] { return client().Generate(r, nullptr, call); });
  ASSERT_TRUE(env_->engine().WaitUntilPaused());
  EXPECT_THAT(result.get(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The server's own deadline timer cancels the engine request.
  ASSERT_TRUE(env_->engine().WaitForCancels(1));
  env_->engine().Resume();
  // The server stopped the sequence at the next step and reported the deadline.
  ASSERT_TRUE(Eventually([&] {
    return !env_->logs().Matching({"rid=deadline-test", "code=DEADLINE_EXCEEDED"}).empty();
  })) << ::testing::PrintToString(env_->logs().Lines());
  EXPECT_EQ(env_->engine().stats().tokens_out, 1);
  ASSERT_OK_AND_ASSIGN(auto v, env_->Metric("loraserve_requests_total",
                                            {{"rpc", "Generate"}, {"code", "DEADLINE_EXCEEDED"}}));
  EXPECT_EQ(v, 1.0);
}

TEST_F(InferenceServiceTest, CancellationMidStreamCancelsTheEngineRequest) {
  // The engine holds after the first step, so the cancellation lands before a second token.
  env_->engine().PauseAfterNextStep();
  GenerateRequest r = Greedy("", Prompt(), 400);
  CallOptions call;
  call.request_id = "cancel-test";
  int seen = 0;
  auto status = client().Generate(
      r,
      [&](const GeneratedToken&) {
        ++seen;
        EXPECT_TRUE(env_->engine().WaitUntilPaused());
        return false;  // cancel after the first token
      },
      call);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(seen, 1);
  ASSERT_TRUE(env_->engine().WaitForCancels(1)) << "the server did not cancel the engine request";
  env_->engine().Resume();
  ASSERT_TRUE(Eventually(
      [&] { return !env_->logs().Matching({"rid=cancel-test", "code=CANCELLED"}).empty(); }));
  EXPECT_EQ(env_->engine().stats().tokens_out, 1) << "generation went on after the cancel";
  ASSERT_OK_AND_ASSIGN(auto v, env_->Metric("loraserve_requests_total",
                                            {{"rpc", "Generate"}, {"code", "CANCELLED"}}));
  EXPECT_EQ(v, 1.0);
}

class SmallQueueTest : public InferenceServiceTest {
  void ModifyOptions(testing::TestServerOptions* o) override {
    o->engine.max_batch_size = 1;
    o->engine.max_queue = 1;
  }
};

TEST_F(SmallQueueTest, FullQueueIsResourceExhaustedWithRetryAfter) {
  env_->engine().PauseAfterNextStep();
  // A runs (the batch holds one sequence), B waits in the queue (which holds one).
  auto a = std::async(std::launch::async, [&] { return client().Generate(Greedy("", Prompt(), 8)); });
  ASSERT_TRUE(env_->engine().WaitUntilPaused());
  auto second = env_->NewClient();
  auto b = std::async(std::launch::async, [&] { return second->Generate(Greedy("", Prompt(), 8)); });
  ASSERT_TRUE(Eventually([&] { return env_->engine().stats().queue_depth == 1; }));

  CallInfo info;
  CallOptions call;
  call.info = &info;
  call.max_attempts = 1;  // the server's answer itself (the client would retry a greedy request)
  absl::StatusOr<GenerateResult> c = client().Generate(Greedy("", Prompt(), 8), nullptr, call);
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_TRUE(info.retry_after.has_value());
  EXPECT_GT(*info.retry_after, absl::ZeroDuration());
  EXPECT_LE(*info.retry_after, absl::Seconds(5));
  EXPECT_EQ(RetryAfterOf(c.status()), info.retry_after);
  EXPECT_EQ(RequestIdOf(c.status()), info.request_id);

  env_->engine().Resume();
  ASSERT_OK_AND_ASSIGN(GenerateResult ra, a.get());
  ASSERT_OK_AND_ASSIGN(GenerateResult rb, b.get());
  EXPECT_EQ(Ids(ra), Ids(rb));  // same greedy request, same answer, queued or not
  ASSERT_OK_AND_ASSIGN(auto exhausted, env_->Metric("loraserve_requests_total",
                                                    {{"rpc", "Generate"}, {"code", "RESOURCE_EXHAUSTED"}}));
  EXPECT_EQ(exhausted, 1.0);
}

TEST_F(InferenceServiceTest, ConcurrentRequestsOfDifferentAdaptersShareBatches) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter").status());
  // The rows of PEFT's multi/mixed_batch fixture.
  const std::vector<std::string> adapters = {"qv_r4", "qv_r4_b", ""};
  const auto prompts = FixturePrompts("multi/mixed_batch");
  ASSERT_EQ(prompts.size(), 3u);

  // Single-request references, one at a time.
  std::vector<GenerateResult> alone;
  std::vector<ScoreResult> alone_scores;
  for (size_t i = 0; i < adapters.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(GenerateResult g, client().Generate(Greedy(adapters[i], prompts[i], 12)));
    alone.push_back(g);
    ScoreRequest s;
    s.adapter = adapters[i];
    s.token_ids = prompts[i];
    s.full_logits = true;
    ASSERT_OK_AND_ASSIGN(ScoreResult sr, client().Score(s));
    alone_scores.push_back(sr);
  }
  const int64_t multi_before = env_->engine().stats().multi_adapter_steps;
  EXPECT_EQ(multi_before, 0);

  // Together: the first request's prefill runs, the engine holds, the other two queue; on resume
  // the next step admits them beside the first one's decode.
  env_->engine().PauseAfterNextStep();
  std::vector<std::unique_ptr<Client>> clients;
  for (size_t i = 0; i < adapters.size(); ++i) clients.push_back(env_->NewClient());
  std::vector<std::future<absl::StatusOr<GenerateResult>>> together;
  together.push_back(std::async(std::launch::async,
                                [&] { return clients[0]->Generate(Greedy(adapters[0], prompts[0], 12)); }));
  ASSERT_TRUE(env_->engine().WaitUntilPaused());
  for (size_t i = 1; i < adapters.size(); ++i) {
    together.push_back(std::async(std::launch::async, [&, i] {
      return clients[i]->Generate(Greedy(adapters[i], prompts[i], 12));
    }));
  }
  ASSERT_TRUE(Eventually([&] { return env_->engine().stats().queue_depth == 2; }));
  env_->engine().Resume();
  for (size_t i = 0; i < adapters.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(GenerateResult g, together[i].get());
    EXPECT_EQ(Ids(g), Ids(alone[i])) << "adapter '" << adapters[i] << "'";
    for (size_t t = 0; t < g.tokens.size() && t < alone[i].tokens.size(); ++t) {
      EXPECT_NEAR(g.tokens[t].logprob, alone[i].tokens[t].logprob, 1e-4) << adapters[i] << " token " << t;
    }
  }
  EXPECT_GT(env_->engine().stats().multi_adapter_steps, multi_before);
  ASSERT_OK_AND_ASSIGN(auto multi_metric, env_->Metric("loraserve_multi_adapter_steps_total"));
  ASSERT_TRUE(multi_metric.has_value());
  EXPECT_GT(*multi_metric, 0);

  // Concurrent Scores of the three adapters give each one's single-request logits, and these are
  // PEFT's mixed-batch rows.
  std::vector<std::future<absl::StatusOr<ScoreResult>>> scores;
  for (size_t i = 0; i < adapters.size(); ++i) {
    scores.push_back(std::async(std::launch::async, [&, i] {
      ScoreRequest s;
      s.adapter = adapters[i];
      s.token_ids = prompts[i];
      s.full_logits = true;
      return clients[i]->Score(s);
    }));
  }
  for (size_t i = 0; i < adapters.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(ScoreResult sr, scores[i].get());
    EXPECT_LE(AllcloseExcess(sr.logits, alone_scores[i].logits), 1e-6) << adapters[i];
    EXPECT_LE(AllcloseExcess(sr.logits, FixtureTensor("multi/mixed_batch", absl::StrCat("logits.row", i))),
              kLogitsAtol)
        << adapters[i];
  }
}

class SmallMessageTest : public InferenceServiceTest {
  void ModifyOptions(testing::TestServerOptions* o) override {
    o->server.max_message_bytes = 32 * 1024;
  }
};

TEST_F(SmallMessageTest, OversizedScoreReplyIsRefusedWithAHint) {
  // 24 tokens x 512 float32 logits = 48 KiB > 32 KiB.
  const std::vector<int32_t> ids = FixturePrompts("qv_r4").at(2);
  ASSERT_EQ(ids.size(), 24u);
  ScoreRequest s;
  s.token_ids = ids;
  s.full_logits = true;
  EXPECT_THAT(client().Score(s),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_logprobs")));
  // The suggested alternative fits and agrees with the fixture's logits.
  s.full_logits = false;
  s.top_logprobs = 5;
  ASSERT_OK_AND_ASSIGN(ScoreResult r, client().Score(s));
  ASSERT_EQ(r.top_logprobs.size(), ids.size());
  ASSERT_EQ(r.token_logprobs.size(), ids.size() - 1);
  const std::vector<float> logits = FixtureTensor("qv_r4", "logits.base.p2");
  ASSERT_EQ(logits.size(), ids.size() * 512);
  for (size_t t = 0; t < ids.size(); ++t) {
    const float* row = logits.data() + t * 512;
    double z = 0;
    const float mx = *std::max_element(row, row + 512);
    for (int v = 0; v < 512; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
    const double log_z = mx + std::log(z);
    const int32_t best = static_cast<int32_t>(std::max_element(row, row + 512) - row);
    EXPECT_EQ(r.top_logprobs[t][0].id, best) << t;
    EXPECT_NEAR(r.top_logprobs[t][0].logprob, row[best] - log_z, 1e-4) << t;
    if (t + 1 < ids.size()) {
      EXPECT_NEAR(r.token_logprobs[t], row[ids[t + 1]] - log_z, 1e-4) << t;
    }
  }
}

}  // namespace
}  // namespace loraserve
