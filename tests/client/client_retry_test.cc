// The client library's retry, deadline, token and streaming behaviour against a scripted fake
// server (real gRPC on 127.0.0.1, sync services that fail on command). Needs no model.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "loraserve/v1/inference_service.grpc.pb.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;
namespace pb = ::loraserve::v1;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

// What the fake does with the next calls of one RPC: the first `fail` calls end with `code`
// (plus `retry-after-ms` when retry_after_ms >= 0), later ones succeed.
struct Script {
  absl::Mutex mu;
  int fail = 0;
  grpc::StatusCode code = grpc::StatusCode::UNAVAILABLE;
  int retry_after_ms = -1;
  absl::Duration delay;  // before answering, every call
  std::vector<absl::Time> calls;
  std::vector<std::string> authorization;

  // Records the call; returns the status to fail with, or OK.
  grpc::Status Enter(grpc::ServerContext* ctx) {
    absl::Duration d;
    grpc::Status out;
    {
      absl::MutexLock lock(&mu);
      calls.push_back(absl::Now());
      auto it = ctx->client_metadata().find("authorization");
      authorization.push_back(it == ctx->client_metadata().end()
                                  ? ""
                                  : std::string(it->second.data(), it->second.size()));
      d = delay;
      if (fail > 0) {
        --fail;
        if (retry_after_ms >= 0) {
          ctx->AddTrailingMetadata("retry-after-ms", absl::StrCat(retry_after_ms));
        }
        out = grpc::Status(code, "scripted failure");
      }
    }
    absl::SleepFor(d);
    return out;
  }
  void Set(int n, grpc::StatusCode c, int retry_ms = -1) {
    absl::MutexLock lock(&mu);
    fail = n;
    code = c;
    retry_after_ms = retry_ms;
  }
  int count() {
    absl::MutexLock lock(&mu);
    return static_cast<int>(calls.size());
  }
};

class FakeInference final : public pb::InferenceService::Service {
 public:
  Script tokenize, generate, score;
  // Generate: the first `tokens_before_failure` tokens are sent before a scripted failure.
  std::atomic<int> tokens_before_failure{0};

  grpc::Status Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req,
                        pb::TokenizeResponse* resp) override {
    grpc::Status s = tokenize.Enter(ctx);
    if (!s.ok()) return s;
    for (char c : req->text()) resp->add_token_ids(static_cast<unsigned char>(c));
    return grpc::Status::OK;
  }
  grpc::Status Score(grpc::ServerContext* ctx, const pb::ScoreRequest* req,
                     pb::ScoreResponse* resp) override {
    grpc::Status s = score.Enter(ctx);
    if (!s.ok()) return s;
    resp->set_num_tokens(req->token_ids_size());
    return grpc::Status::OK;
  }
  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::GenerateResponse>* writer) override {
    bool failing;
    absl::Duration token_delay;
    {
      absl::MutexLock lock(&generate.mu);
      failing = generate.fail > 0;
      token_delay = generate_token_delay;
    }
    const int n = req->sampling().max_new_tokens() > 0 ? req->sampling().max_new_tokens() : 4;
    if (failing) {
      for (int i = 0; i < tokens_before_failure.load(); ++i) {
        pb::GenerateResponse msg;
        auto* t = msg.add_tokens();
        t->set_id(100 + i);
        t->set_index(i);
        t->set_text(absl::StrCat("t", i));
        writer->Write(msg);
      }
    }
    grpc::Status s = generate.Enter(ctx);
    if (!s.ok()) return s;
    for (int i = 0; i < n; ++i) {
      if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      pb::GenerateResponse msg;
      auto* t = msg.add_tokens();
      t->set_id(100 + i);
      t->set_index(i);
      t->set_text(absl::StrCat("t", i));
      if (i + 1 == n) {
        msg.mutable_summary()->set_finish_reason(pb::FINISH_REASON_LENGTH);
        msg.mutable_summary()->set_completion_tokens(n);
        msg.mutable_summary()->set_seed(req->sampling().seed());
      }
      writer->Write(msg);
      absl::SleepFor(token_delay);
    }
    return grpc::Status::OK;
  }
  void SetGenerateTokenDelay(absl::Duration d) {
    absl::MutexLock lock(&generate.mu);
    generate_token_delay = d;
  }

 private:
  // Pause after each Generate token. Set by the test thread while server threads run handlers: the
  // RPC that follows the change orders them only through the socket, which is not a C++
  // synchronization (and invisible to TSan).
  absl::Duration generate_token_delay ABSL_GUARDED_BY(generate.mu) = absl::ZeroDuration();
};

class FakeAdapters final : public pb::AdapterService::Service {
 public:
  Script get, del, merge, load, upload;
  std::atomic<int64_t> uploaded_bytes{0};

  grpc::Status GetAdapter(grpc::ServerContext* ctx, const pb::GetAdapterRequest* req,
                          pb::GetAdapterResponse* resp) override {
    grpc::Status s = get.Enter(ctx);
    if (s.ok()) resp->mutable_adapter()->set_name(req->name());
    return s;
  }
  grpc::Status DeleteAdapter(grpc::ServerContext* ctx, const pb::DeleteAdapterRequest*,
                             pb::DeleteAdapterResponse*) override {
    return del.Enter(ctx);
  }
  grpc::Status MergeAdapter(grpc::ServerContext* ctx, const pb::MergeAdapterRequest* req,
                            pb::MergeAdapterResponse* resp) override {
    grpc::Status s = merge.Enter(ctx);
    if (s.ok()) resp->mutable_adapter()->set_name(req->name());
    return s;
  }
  grpc::Status LoadAdapter(grpc::ServerContext* ctx, const pb::LoadAdapterRequest* req,
                           pb::LoadAdapterResponse* resp) override {
    grpc::Status s = load.Enter(ctx);
    if (!s.ok()) return s;
    resp->mutable_adapter()->set_name(req->name());
    resp->mutable_adapter()->set_checksum("abc");
    resp->set_already_loaded(load.count() > 1);
    return s;
  }
  grpc::Status UploadAdapter(grpc::ServerContext* ctx,
                             grpc::ServerReader<pb::UploadAdapterRequest>* reader,
                             pb::UploadAdapterResponse* resp) override {
    pb::UploadAdapterRequest msg;
    std::string name;
    int64_t bytes = 0;
    while (reader->Read(&msg)) {
      if (!msg.name().empty()) name = msg.name();
      bytes += static_cast<int64_t>(msg.chunk().data().size());
    }
    uploaded_bytes += bytes;
    grpc::Status s = upload.Enter(ctx);
    if (s.ok()) resp->mutable_adapter()->set_name(name);
    return s;
  }
};

class ClientRetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&inference_);
    builder.RegisterService(&adapters_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  }

  // A client with fast, jitter-free retries unless the test changes the policy.
  std::unique_ptr<Client> NewClient(ClientOptions options = {}) {
    options.address = address_;
    if (options.retry.initial_backoff == RetryPolicy().initial_backoff) {
      options.retry.initial_backoff = absl::Milliseconds(5);
      options.retry.jitter = 0;
    }
    auto client = Client::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  FakeInference inference_;
  FakeAdapters adapters_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(ClientRetryTest, IdempotentCallSucceedsAfterUnavailableFailures) {
  auto client = NewClient();
  inference_.tokenize.Set(3, grpc::StatusCode::UNAVAILABLE);
  CallInfo info;
  CallOptions call;
  call.info = &info;
  auto ids = client->Tokenize("ab", true, false, call);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{'a', 'b'}));
  EXPECT_EQ(inference_.tokenize.count(), 4);
  EXPECT_EQ(info.attempts, 4);

  adapters_.get.Set(2, grpc::StatusCode::UNAVAILABLE);
  auto a = client->GetAdapter("x");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(adapters_.get.count(), 3);

  inference_.score.Set(1, grpc::StatusCode::UNAVAILABLE);
  ScoreRequest sr;
  sr.token_ids = {1, 2, 3};
  auto score = client->Score(sr);
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->num_tokens, 3);
  EXPECT_EQ(inference_.score.count(), 2);
}

TEST_F(ClientRetryTest, GivesUpAfterMaxAttempts) {
  ClientOptions options;
  options.retry.max_attempts = 3;
  auto client = NewClient(options);
  inference_.tokenize.Set(10, grpc::StatusCode::UNAVAILABLE);
  CallInfo info;
  CallOptions call;
  call.info = &info;
  EXPECT_THAT(client->Tokenize("a", true, false, call).status(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("scripted failure")));
  EXPECT_EQ(inference_.tokenize.count(), 3);
  EXPECT_EQ(info.attempts, 3);

  // Per call: 1 attempt only.
  call.max_attempts = 1;
  EXPECT_THAT(client->Tokenize("a", true, false, call).status(),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(inference_.tokenize.count(), 4);
}

TEST_F(ClientRetryTest, NonIdempotentCallsAreNotRetried) {
  auto client = NewClient();
  adapters_.del.Set(5, grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(client->DeleteAdapter("x"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(adapters_.del.count(), 1);

  adapters_.merge.Set(5, grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(client->MergeAdapter("x").status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(adapters_.merge.count(), 1);

  // Other codes are never retried, even for idempotent calls.
  adapters_.get.Set(5, grpc::StatusCode::INTERNAL);
  EXPECT_THAT(client->GetAdapter("x").status(), StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(adapters_.get.count(), 1);
}

TEST_F(ClientRetryTest, ResourceExhaustedIsRetriedOnlyWithARetryDelay) {
  auto client = NewClient();
  // Without retry-after-ms: not retried.
  inference_.tokenize.Set(1, grpc::StatusCode::RESOURCE_EXHAUSTED);
  absl::Status s = client->Tokenize("a", true).status();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_FALSE(RetryAfterOf(s).has_value());
  EXPECT_EQ(inference_.tokenize.count(), 1);

  // With it: retried after at least the server's delay.
  inference_.tokenize.Set(1, grpc::StatusCode::RESOURCE_EXHAUSTED, /*retry_ms=*/150);
  auto ids = client->Tokenize("a", true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::MutexLock lock(&inference_.tokenize.mu);
  ASSERT_EQ(inference_.tokenize.calls.size(), 3u);
  EXPECT_GE(inference_.tokenize.calls[2] - inference_.tokenize.calls[1], absl::Milliseconds(150));
}

TEST_F(ClientRetryTest, BackoffGrowsExponentiallyAndJitterStaysInBounds) {
  ClientOptions options;
  options.retry.initial_backoff = absl::Milliseconds(40);
  options.retry.multiplier = 2;
  options.retry.max_backoff = absl::Milliseconds(100);
  options.retry.jitter = 0.25;
  options.retry.max_attempts = 5;
  auto client = NewClient(options);
  inference_.tokenize.Set(4, grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(client->Tokenize("a", true).ok());
  absl::MutexLock lock(&inference_.tokenize.mu);
  const auto& t = inference_.tokenize.calls;
  ASSERT_EQ(t.size(), 5u);
  // Delays 40, 80, 100 (capped), 100 ms, each within ±25%.
  const double want[] = {40, 80, 100, 100};
  for (int i = 0; i < 4; ++i) {
    const double gap = absl::ToDoubleMilliseconds(t[i + 1] - t[i]);
    EXPECT_GE(gap, want[i] * 0.75 - 1) << "retry " << i + 1;
    EXPECT_LE(gap, want[i] * 1.25 + 60) << "retry " << i + 1;  // + scheduling slack
  }
}

TEST_F(ClientRetryTest, RetriesStayWithinTheCallDeadline) {
  ClientOptions options;
  options.retry.max_attempts = 100;
  options.retry.initial_backoff = absl::Milliseconds(50);
  options.retry.jitter = 0;
  auto client = NewClient(options);
  inference_.tokenize.Set(1000, grpc::StatusCode::UNAVAILABLE);
  CallOptions call;
  call.timeout = absl::Milliseconds(400);
  const absl::Time start = absl::Now();
  absl::Status s = client->Tokenize("a", true, false, call).status();
  const absl::Duration took = absl::Now() - start;
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(took, absl::Milliseconds(600));
  EXPECT_LT(inference_.tokenize.count(), 6);  // 50 + 100 + 200 ms of backoff fit, not more

  // A slow server: the deadline ends the call.
  {
    absl::MutexLock lock(&inference_.tokenize.mu);
    inference_.tokenize.fail = 0;
    inference_.tokenize.delay = absl::Milliseconds(500);
  }
  call.timeout = absl::Milliseconds(100);
  EXPECT_THAT(client->Tokenize("a", true, false, call).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(ClientRetryTest, ServerDownIsUnavailableAfterRetries) {
  ClientOptions options;
  options.address = "127.0.0.1:1";  // nothing listens there
  options.retry.initial_backoff = absl::Milliseconds(5);
  options.retry.jitter = 0;
  auto client = Client::Create(options);
  ASSERT_TRUE(client.ok());
  CallInfo info;
  CallOptions call;
  call.info = &info;
  call.timeout = absl::Seconds(5);
  EXPECT_THAT((*client)->ListAdapters(call).status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(info.attempts, 4);
}

TEST_F(ClientRetryTest, SeededGenerateRestartsOnlyBeforeTheFirstToken) {
  auto client = NewClient();
  GenerateRequest req;
  req.text = "x";
  req.sampling.max_new_tokens = 3;
  req.sampling.seed = 7;

  // Seeded, fails before any token: restarted, complete result.
  inference_.generate.Set(2, grpc::StatusCode::UNAVAILABLE);
  std::vector<int32_t> seen;
  auto r = client->Generate(req, [&](const GeneratedToken& t) {
    seen.push_back(t.id);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(seen, (std::vector<int32_t>{100, 101, 102}));
  EXPECT_EQ(r->tokens.size(), 3u);
  EXPECT_EQ(r->seed, 7u);
  EXPECT_EQ(inference_.generate.count(), 3);

  // Greedy (temperature 0) is deterministic too.
  GenerateRequest greedy = req;
  greedy.sampling.seed.reset();
  greedy.sampling.temperature = 0;
  inference_.generate.Set(1, grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(client->Generate(greedy).ok());
  EXPECT_EQ(inference_.generate.count(), 5);

  // Unseeded sampling: not retried.
  GenerateRequest unseeded = req;
  unseeded.sampling.seed.reset();
  inference_.generate.Set(1, grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(client->Generate(unseeded).status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(inference_.generate.count(), 6);

  // Seeded, but a token had arrived: not retried (the caller has seen output).
  inference_.tokens_before_failure = 1;
  inference_.generate.Set(1, grpc::StatusCode::UNAVAILABLE);
  seen.clear();
  absl::Status s = client->Generate(req, [&](const GeneratedToken& t) {
                           seen.push_back(t.id);
                           return true;
                         }).status();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(seen, (std::vector<int32_t>{100}));
  EXPECT_EQ(inference_.generate.count(), 7);
}

TEST_F(ClientRetryTest, GenerateStreamIteratesAndCancels) {
  auto client = NewClient();
  GenerateRequest req;
  req.text = "x";
  req.sampling.max_new_tokens = 5;
  std::unique_ptr<GenerateStream> stream = client->StartGenerate(req);
  GeneratedToken t;
  std::vector<int32_t> ids;
  while (stream->Next(&t)) ids.push_back(t.id);
  auto r = stream->Finish();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ids, (std::vector<int32_t>{100, 101, 102, 103, 104}));
  EXPECT_EQ(r->text, "t0t1t2t3t4");
  EXPECT_EQ(r->finish_reason, FinishReason::kLength);

  // Cancel from another thread while the server is still writing.
  inference_.SetGenerateTokenDelay(absl::Milliseconds(20));
  req.sampling.max_new_tokens = 1000;
  stream = client->StartGenerate(req);
  ASSERT_TRUE(stream->Next(&t));
  std::thread canceller([&] { stream->Cancel(); });
  int more = 0;
  while (stream->Next(&t)) ++more;
  canceller.join();
  EXPECT_LT(more, 900);
  EXPECT_THAT(stream->Finish().status(), StatusIs(absl::StatusCode::kCancelled));

  // Dropping a stream mid-way cancels it without hanging.
  stream = client->StartGenerate(req);
  ASSERT_TRUE(stream->Next(&t));
  stream.reset();
}

TEST_F(ClientRetryTest, TokenCallbackStopsTheGeneration) {
  auto client = NewClient();
  GenerateRequest req;
  req.text = "x";
  req.sampling.max_new_tokens = 50;
  int n = 0;
  auto r = client->Generate(req, [&](const GeneratedToken&) { return ++n < 2; });
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(n, 2);
}

TEST_F(ClientRetryTest, LoadAndUploadAreRetried) {
  auto client = NewClient();
  adapters_.load.Set(1, grpc::StatusCode::UNAVAILABLE);
  auto a = client->LoadAdapter("a", "dir");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->checksum, "abc");
  EXPECT_TRUE(a->already_loaded);
  EXPECT_EQ(adapters_.load.count(), 2);

  const fs::path dir = fs::path(::testing::TempDir()) / "client_retry_upload";
  fs::create_directories(dir);
  {
    std::ofstream(dir / "adapter_config.json") << "{}";
    std::ofstream f(dir / "adapter_model.safetensors", std::ios::binary);
    f << std::string(2500, 'x');
  }
  ClientOptions options;
  options.upload_chunk_bytes = 1000;
  auto small_chunks = NewClient(options);
  adapters_.upload.Set(1, grpc::StatusCode::UNAVAILABLE);
  std::vector<TransferProgress> progress;
  auto u = small_chunks->UploadAdapter("u", dir.string(), {},
                                       [&](const TransferProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->name, "u");
  EXPECT_EQ(adapters_.upload.count(), 2);
  EXPECT_EQ(adapters_.uploaded_bytes.load(), 2 * 2502);
  // Two attempts of 1 + 3 chunks each; the last callback of the successful attempt is complete.
  ASSERT_EQ(progress.size(), 8u);
  EXPECT_EQ(progress.back().bytes_done, 2502);
  EXPECT_EQ(progress.back().total_bytes, 2502);
  EXPECT_EQ(progress.back().files_done, 2);
  EXPECT_EQ(progress.back().path, "adapter_model.safetensors");
  fs::remove_all(dir);
}

TEST_F(ClientRetryTest, BearerTokenIsSentWithEveryCallAndAttempt) {
  ClientOptions options;
  options.bearer_token = "s3cret-token";
  auto client = NewClient(options);
  inference_.tokenize.Set(1, grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(client->Tokenize("a", true).ok());
  ASSERT_TRUE(client->Generate(GenerateRequest{"", "x", {}, {}}).ok());
  auto plain = NewClient();
  ASSERT_TRUE(plain->Tokenize("a", true).ok());
  absl::MutexLock lock(&inference_.tokenize.mu);
  EXPECT_EQ(inference_.tokenize.authorization,
            (std::vector<std::string>{"Bearer s3cret-token", "Bearer s3cret-token", ""}));
  absl::MutexLock lock2(&inference_.generate.mu);
  EXPECT_EQ(inference_.generate.authorization, (std::vector<std::string>{"Bearer s3cret-token"}));
}

TEST(ClientOptionsTest, InvalidOptionsAreRefused) {
  ClientOptions o;
  o.bearer_token = "has space";
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  o = ClientOptions();
  o.retry.max_attempts = 0;
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  o = ClientOptions();
  o.retry.jitter = 2;
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  o = ClientOptions();
  o.tls.root_certs_pem = "x";  // TLS not enabled
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  o = ClientOptions();
  o.tls.enabled = true;
  o.tls.client_cert_pem = "x";  // without the key
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  o = ClientOptions();
  o.address = "";
  EXPECT_THAT(Client::Create(o).status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace loraserve
