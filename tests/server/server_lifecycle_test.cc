// The server around the services: health before warm-up and while draining, request ids, and the
// /metrics endpoint (fetched over HTTP) changing as requests run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::testing::FixturePrompts;
using ::loraserve::testing::HttpGet;
using ::loraserve::testing::StatusIs;
using ::loraserve::testing::TestServer;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Optional;

GenerateRequest Greedy(const std::string& adapter, int max_new_tokens) {
  GenerateRequest r;
  r.adapter = adapter;
  r.token_ids = FixturePrompts("qv_r4").at(0);
  r.sampling.temperature = 0;
  r.sampling.max_new_tokens = max_new_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

std::unique_ptr<TestServer> StartServer(testing::TestServerOptions options) {
  auto t = TestServer::Start(std::move(options));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(ServerLifecycleTest, NotServingUntilTheEngineIsLoadedAndWarm) {
  LORASERVE_REQUIRE_SHARED();
  auto options = TestServer::DefaultOptions();
  options.attach_engine = false;
  auto env = StartServer(options);
  ASSERT_NE(env, nullptr);
  ASSERT_OK_AND_ASSIGN(ServingStatus before, env->client().Health());
  EXPECT_EQ(before, ServingStatus::kNotServing);
  EXPECT_THAT(env->client().Generate(Greedy("", 4)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting")));
  EXPECT_THAT(env->client().ListAdapters(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(env->client().UploadAdapter("x", testing::PeftRoot() + "/qv_r4/adapter"),
              StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_OK_AND_ASSIGN(auto ready, env->Metric("loraserve_engine_ready"));
  EXPECT_THAT(ready, Optional(0.0));
  // The HTTP probes say the same: alive, not ready.
  const int http = env->server().metrics_port();
  ASSERT_OK_AND_ASSIGN(testing::HttpReply live, testing::HttpRequest(http, "GET", "/healthz"));
  EXPECT_EQ(live.status, 200);
  EXPECT_EQ(live.body, "ok\n");
  ASSERT_OK_AND_ASSIGN(testing::HttpReply not_ready, testing::HttpRequest(http, "GET", "/readyz"));
  EXPECT_EQ(not_ready.status, 503);
  EXPECT_THAT(not_ready.body, HasSubstr("loading"));

  ASSERT_OK(env->AttachEngine());  // loads stories260K and runs the warm-up forward
  ASSERT_OK_AND_ASSIGN(ServingStatus after, env->client().Health());
  EXPECT_EQ(after, ServingStatus::kServing);
  ASSERT_OK_AND_ASSIGN(ready, env->Metric("loraserve_engine_ready"));
  EXPECT_THAT(ready, Optional(1.0));
  ASSERT_OK_AND_ASSIGN(testing::HttpReply is_ready, testing::HttpRequest(http, "GET", "/readyz"));
  EXPECT_EQ(is_ready.status, 200);
  EXPECT_EQ(is_ready.body, "ready\n");
  EXPECT_OK(env->client().Generate(Greedy("", 4)).status());
  EXPECT_EQ(env->logs().Matching({"event=engine_ready", "model=stories260K"}).size(), 1u);
}

TEST(ServerLifecycleTest, DrainingIsNotServingAndLetsRequestsInFlightFinish) {
  LORASERVE_REQUIRE_SHARED();
  auto env = StartServer(TestServer::DefaultOptions());
  ASSERT_NE(env, nullptr);
  env->engine().PauseAfterNextStep();
  auto in_flight = std::async(std::launch::async, [&] { return env->client().Generate(Greedy("", 20)); });
  ASSERT_TRUE(env->engine().WaitUntilPaused());

  auto drain = std::async(std::launch::async, [&] { env->server().Shutdown(absl::Seconds(30)); });
  auto probe = env->NewClient();
  const absl::Time end = absl::Now() + absl::Seconds(10);
  absl::StatusOr<ServingStatus> health = probe->Health();
  while (health.ok() && *health == ServingStatus::kServing && absl::Now() < end) health = probe->Health();
  ASSERT_OK(health.status());
  EXPECT_EQ(*health, ServingStatus::kNotServing);
  ASSERT_OK_AND_ASSIGN(testing::HttpReply draining, testing::HttpRequest(env->server().metrics_port(), "GET", "/readyz"));
  EXPECT_EQ(draining.status, 503);
  EXPECT_THAT(draining.body, HasSubstr("draining"));
  ASSERT_OK_AND_ASSIGN(testing::HttpReply live, testing::HttpRequest(env->server().metrics_port(), "GET", "/healthz"));
  EXPECT_EQ(live.status, 200);
  EXPECT_THAT(probe->Generate(Greedy("", 4)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));

  env->engine().Resume();
  ASSERT_OK_AND_ASSIGN(GenerateResult r, in_flight.get());
  EXPECT_EQ(r.completion_tokens, 20);
  ASSERT_EQ(drain.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(env->logs().Matching({"event=draining"}).size(), 1u);
  EXPECT_THAT(probe->Health(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ServerLifecycleTest, TheGracePeriodEndsRequestsStillRunning) {
  LORASERVE_REQUIRE_SHARED();
  auto env = StartServer(TestServer::DefaultOptions());
  ASSERT_NE(env, nullptr);
  env->engine().PauseAfterNextStep();
  auto in_flight = std::async(std::launch::async, [&] { return env->client().Generate(Greedy("", 400)); });
  ASSERT_TRUE(env->engine().WaitUntilPaused());
  auto drain = std::async(std::launch::async, [&] { env->server().Shutdown(absl::Milliseconds(200)); });
  absl::SleepFor(absl::Milliseconds(400));  // past the grace period
  env->engine().Resume();
  EXPECT_THAT(in_flight.get(), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_EQ(drain.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(env->engine().stats().tokens_out, 1);  // nothing ran after the grace period
}

TEST(ServerLifecycleTest, RequestIdsComeFromMetadataOrAreGenerated) {
  LORASERVE_REQUIRE_SHARED();
  auto env = StartServer(TestServer::DefaultOptions());
  ASSERT_NE(env, nullptr);
  CallInfo info;
  CallOptions call;
  call.info = &info;
  call.request_id = "client-id-42";
  ASSERT_OK(env->client().Tokenize("hello", true, false, call).status());
  EXPECT_EQ(info.request_id, "client-id-42");
  EXPECT_EQ(env->logs().Matching({"rid=client-id-42", "rpc=Tokenize", "code=OK"}).size(), 1u);

  call.request_id = "not valid!";
  ASSERT_OK(env->client().Tokenize("hello", true, false, call).status());
  EXPECT_THAT(info.request_id, MatchesRegex("[0-9a-f]{16}"));

  call.request_id.clear();
  auto missing = env->client().GetAdapter("missing", call);
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(RequestIdOf(missing.status()), MatchesRegex("[0-9a-f]{16}"));
  EXPECT_EQ(RequestIdOf(missing.status()), info.request_id);
  EXPECT_EQ(env->logs()
                .Matching({"rid=" + info.request_id, "rpc=GetAdapter", "adapter=missing", "code=NOT_FOUND"})
                .size(),
            1u);
}

TEST(ServerLifecycleTest, MetricsChangeAsRequestsRun) {
  LORASERVE_REQUIRE_SHARED();
  auto options = TestServer::DefaultOptions();
  options.engine.kv_budget_bytes = 64 << 20;
  auto env = StartServer(options);
  ASSERT_NE(env, nullptr);
  Client& client = env->client();
  auto metric = [&](const std::string& name, const std::map<std::string, std::string>& labels = {}) {
    auto v = env->Metric(name, labels);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : std::nullopt;
  };
  EXPECT_EQ(metric("loraserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}), std::nullopt);
  EXPECT_THAT(metric("loraserve_kv_cache_budget_bytes"), Optional(double{64 << 20}));
  EXPECT_THAT(metric("loraserve_adapters", {{"state", "ready"}, {"residency", "resident"}}), Optional(0.0));

  // One generation: requests, tokens in and out, latency histograms, steps.
  const size_t prompt = FixturePrompts("qv_r4").at(0).size();
  ASSERT_OK(client.Generate(Greedy("", 10)).status());
  EXPECT_THAT(metric("loraserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}), Optional(1.0));
  EXPECT_THAT(metric("loraserve_request_duration_seconds_count", {{"rpc", "Generate"}}), Optional(1.0));
  EXPECT_THAT(metric("loraserve_generated_tokens_total", {{"adapter", "__base__"}}), Optional(10.0));
  EXPECT_THAT(metric("loraserve_prompt_tokens_total", {{"adapter", "__base__"}}), Optional(double(prompt)));
  EXPECT_THAT(metric("loraserve_time_to_first_token_seconds_count"), Optional(1.0));
  EXPECT_THAT(metric("loraserve_time_per_output_token_seconds_count"), Optional(1.0));
  EXPECT_THAT(metric("loraserve_queue_time_seconds_count"), Optional(1.0));
  // The engine records a step after delivering its tokens: the reply can arrive first.
  for (const absl::Time end = absl::Now() + absl::Seconds(5);
       metric("loraserve_engine_steps_total") != std::optional<double>(10.0) && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_THAT(metric("loraserve_engine_steps_total"), Optional(10.0));  // one prefill + 9 decodes
  EXPECT_THAT(metric("loraserve_batch_size_count"), Optional(10.0));
  EXPECT_THAT(metric("loraserve_batch_adapters_bucket", {{"le", "1"}}), Optional(10.0));

  // Adapters by state, resident bytes, load and merge durations.
  ASSERT_OK(client.LoadAdapter("qv_r4", "qv_r4/adapter").status());
  EXPECT_THAT(metric("loraserve_adapters", {{"state", "ready"}, {"residency", "resident"}}), Optional(1.0));
  EXPECT_THAT(metric("loraserve_adapter_resident_bytes"), Optional(17920.0));
  EXPECT_THAT(metric("loraserve_adapter_load_duration_seconds_count"), Optional(1.0));
  ASSERT_OK(client.MergeAdapter("qv_r4").status());
  EXPECT_THAT(metric("loraserve_adapters", {{"state", "merged"}, {"residency", "resident"}}), Optional(1.0));
  EXPECT_THAT(metric("loraserve_adapters", {{"state", "ready"}, {"residency", "resident"}}), Optional(0.0));
  EXPECT_THAT(metric("loraserve_adapter_merge_duration_seconds_count", {{"op", "merge"}}), Optional(1.0));

  // Per-adapter Score accounting.
  ScoreRequest s;
  s.adapter = "qv_r4";
  s.token_ids = FixturePrompts("qv_r4").at(1);
  ASSERT_OK(client.Score(s).status());
  EXPECT_THAT(metric("loraserve_adapter_requests_total", {{"adapter", "qv_r4"}}), Optional(1.0));
  EXPECT_THAT(metric("loraserve_prompt_tokens_total", {{"adapter", "qv_r4"}}),
              Optional(double(s.token_ids.size())));
  EXPECT_THAT(metric("loraserve_requests_total", {{"rpc", "Score"}, {"code", "OK"}}), Optional(1.0));

  // While the engine holds: a running sequence has KV memory, queued ones show as queue depth.
  env->engine().PauseAfterNextStep();
  auto a = std::async(std::launch::async, [&] { return client.Generate(Greedy("", 5)); });
  ASSERT_TRUE(env->engine().WaitUntilPaused());
  auto other = env->NewClient();
  auto b = std::async(std::launch::async, [&] { return other->Generate(Greedy("qv_r4", 5)); });
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (metric("loraserve_queue_depth") != std::optional<double>(1.0) && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_THAT(metric("loraserve_queue_depth"), Optional(1.0));
  auto kv = metric("loraserve_kv_cache_used_bytes");
  ASSERT_TRUE(kv.has_value());
  EXPECT_GT(*kv, 0);
  env->engine().Resume();
  ASSERT_OK(a.get().status());
  ASSERT_OK(b.get().status());
  EXPECT_THAT(metric("loraserve_queue_depth"), Optional(0.0));
  EXPECT_THAT(metric("loraserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}), Optional(3.0));
  EXPECT_THAT(metric("loraserve_generated_tokens_total", {{"adapter", "qv_r4"}}), Optional(5.0));

  // Failures are counted by code; unknown paths are 404.
  EXPECT_FALSE(client.GetAdapter("missing").ok());
  EXPECT_THAT(metric("loraserve_requests_total", {{"rpc", "GetAdapter"}, {"code", "NOT_FOUND"}}), Optional(1.0));
  EXPECT_THAT(HttpGet(env->server().metrics_port(), "/nope"), StatusIs(absl::StatusCode::kInternal, HasSubstr("404")));
}

TEST(ServerLifecycleTest, AdapterLabelsAreCapped) {
  LORASERVE_REQUIRE_SHARED();
  auto options = TestServer::DefaultOptions();
  options.server.max_adapter_labels = 1;
  auto env = StartServer(options);
  ASSERT_NE(env, nullptr);
  ASSERT_OK(env->client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(env->client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter").status());
  for (const std::string adapter : {"qv_r4", "qv_r4_b", "qv_r4_b", ""}) {
    ScoreRequest s;
    s.adapter = adapter;
    s.token_ids = {1, 300, 301};
    ASSERT_OK(env->client().Score(s).status());
  }
  ASSERT_OK_AND_ASSIGN(std::string text, env->Metrics());
  EXPECT_EQ(testing::FindMetric(text, "loraserve_adapter_requests_total", {{"adapter", "qv_r4"}}), 1.0);
  EXPECT_EQ(testing::FindMetric(text, "loraserve_adapter_requests_total", {{"adapter", "other"}}), 2.0);
  EXPECT_EQ(testing::FindMetric(text, "loraserve_adapter_requests_total", {{"adapter", "__base__"}}), 1.0);
  EXPECT_EQ(text.find("qv_r4_b"), std::string::npos);
}

}  // namespace
}  // namespace loraserve
