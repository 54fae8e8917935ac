// Bearer-token authentication (--auth_tokens_file): the token file rules and the header check, then
// in-process servers driven by the real client library: every loraserve.v1 RPC (the list is checked
// against the proto's services) refuses callers without a known token, the right token passes for
// unary, server-streaming and client-streaming calls, health stays open, refusals are logged and
// counted like other errors, and no token ever reaches the log.
#include <google/protobuf/descriptor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/auth.h"
#include "server/tenants.h"
#include "server/server.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;

using ::loraserve::server::BearerTokenAuth;
using ::loraserve::testing::LogCapture;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::PeftRoot;
using ::loraserve::testing::StatusIs;
using ::loraserve::testing::TestServer;
using ::testing::HasSubstr;
using ::testing::Optional;

constexpr absl::StatusCode kUnauthenticated = absl::StatusCode::kUnauthenticated;
constexpr char kGoodToken[] = "s3cret-token.A1";
constexpr char kOtherGoodToken[] = "second~token";
constexpr char kWrongToken[] = "wrong-token-Z9";

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// A tokens file with comments, blank lines and stray whitespace around the tokens.
std::string TokensFile() {
  return WriteFile(MakeTempDir() + "/tokens",
                   absl::StrCat("# loraserve tokens\n\n  ", kGoodToken, "  \r\n#", kWrongToken,
                                "\n", kOtherGoodToken, "\n"));
}

TEST(BearerTokenAuthTest, TokenFileRulesAndTheHeaderCheck) {
  ASSERT_OK_AND_ASSIGN(auto auth,
                       BearerTokenAuth::FromText("# team a\n\n  alpha-1 \r\nbeta.2\n#gamma\n", "t"));
  EXPECT_EQ(auth->size(), 2);
  // The server checks the file's tokens as its one tenant.
  const auto tenants = server::TenantDirectory::SingleTenant(auth->digests());
  auto check = [&tenants](std::optional<absl::string_view> authorization) {
    return tenants->Authenticate(authorization).status();
  };
  EXPECT_OK(check("Bearer alpha-1"));
  EXPECT_OK(check("bearer beta.2"));  // the scheme is case-insensitive (RFC 7235)
  EXPECT_OK(check("BEARER   alpha-1 "));
  const auto unknown = StatusIs(kUnauthenticated, HasSubstr("unknown bearer token"));
  EXPECT_THAT(check("Bearer gamma"), unknown);
  EXPECT_THAT(check("Bearer alpha"), unknown);  // a prefix of a token
  EXPECT_THAT(check("Bearer alpha-1x"), unknown);
  EXPECT_THAT(check("Bearer Alpha-1"), unknown);  // tokens are case-sensitive
  EXPECT_THAT(check(std::nullopt), StatusIs(kUnauthenticated, HasSubstr("missing")));
  EXPECT_THAT(check("Basic YWxwaGEtMQ=="), StatusIs(kUnauthenticated, HasSubstr("malformed")));
  EXPECT_THAT(check("alpha-1"), StatusIs(kUnauthenticated, HasSubstr("malformed")));
  EXPECT_THAT(check("Bearer    "), StatusIs(kUnauthenticated, HasSubstr("malformed")));
  EXPECT_THAT(check(""), StatusIs(kUnauthenticated, HasSubstr("malformed")));

  EXPECT_THAT(BearerTokenAuth::FromText("", "empty"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no token")));
  EXPECT_THAT(BearerTokenAuth::FromText("# nothing but a comment\n\n   \n", "c"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no token")));
  EXPECT_THAT(BearerTokenAuth::FromText("ok\ntwo words\n", "w"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2")));
  EXPECT_THAT(BearerTokenAuth::FromFile("/nonexistent/loraserve-tokens"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot read")));
}

TEST(BearerTokenAuthTest, ServerStartFailsOnABadTokensFile) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.auth_tokens_file = MakeTempDir() + "/missing";
  EXPECT_THAT(server::Server::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(options.auth_tokens_file)));
  options.auth_tokens_file = WriteFile(MakeTempDir() + "/empty", "");
  EXPECT_THAT(server::Server::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no token")));
  options.auth_tokens_file = WriteFile(MakeTempDir() + "/comments", "# a\n\n#b\n");
  EXPECT_THAT(server::Server::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no token")));
}

using ApiCall = std::function<absl::Status(Client&)>;

// One call of every loraserve.v1 RPC (arguments that would be valid on a ready server).
std::vector<std::pair<std::string, ApiCall>> EveryApiCall() {
  const std::string upload = MakeTempDir();
  WriteFile(upload + "/adapter_config.json", "{}");
  const std::string out = MakeTempDir();
  return {
      {"LoadAdapter", [](Client& c) { return c.LoadAdapter("a", "qv_r4/adapter").status(); }},
      {"UploadAdapter", [upload](Client& c) { return c.UploadAdapter("a", upload).status(); }},
      {"GetAdapter", [](Client& c) { return c.GetAdapter("a").status(); }},
      {"ListAdapters", [](Client& c) { return c.ListAdapters().status(); }},
      {"DeleteAdapter", [](Client& c) { return c.DeleteAdapter("a"); }},
      {"MergeAdapter", [](Client& c) { return c.MergeAdapter("a").status(); }},
      {"UnmergeAdapter", [](Client& c) { return c.UnmergeAdapter("a").status(); }},
      {"UnloadAll", [](Client& c) { return c.UnloadAll().status(); }},
      {"CombineAdapters",
       [](Client& c) {
         CombineRequest r;
         r.name = "b";
         r.sources = {{"a", 1.0}};
         return c.CombineAdapters(r).status();
       }},
      {"SaveAdapter", [out](Client& c) { return c.SaveAdapter("a", out).status(); }},
      {"ExportMergedModel", [out](Client& c) { return c.ExportMergedModel({}, out).status(); }},
      {"Generate",
       [](Client& c) {
         GenerateRequest r;
         r.text = "Once";
         r.sampling.max_new_tokens = 2;
         return c.Generate(r).status();
       }},
      {"Score",
       [](Client& c) {
         ScoreRequest r;
         r.token_ids = {1, 2};
         return c.Score(r).status();
       }},
      {"Tokenize", [](Client& c) { return c.Tokenize("Once", true).status(); }},
      {"Detokenize", [](Client& c) { return c.Detokenize({1}).status(); }},
  };
}

int ApiMethodCount() {
  int n = 0;
  for (const char* service : {"loraserve.v1.AdapterService", "loraserve.v1.InferenceService"}) {
    const auto* d = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
    EXPECT_NE(d, nullptr) << service;
    if (d != nullptr) n += d->method_count();
  }
  return n;
}

// No model needed: authentication comes before the "starting" check, so a server without an
// engine answers UNAUTHENTICATED to callers without a known token and UNAVAILABLE to the others.
TEST(BearerTokenAuthTest, EveryApiCallNeedsATokenAndHealthDoesNot) {
  LogCapture logs;
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.auth_tokens_file = TokensFile();
  options.log_sink = logs.Sink();
  ASSERT_OK_AND_ASSIGN(auto server, server::Server::Start(options));
  server->SetServing(true);
  auto client = [&](const std::string& token) {
    ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", server->port());
    o.default_deadline = absl::Seconds(10);
    o.retry.max_attempts = 1;
    o.bearer_token = token;
    return *Client::Create(o);
  };
  auto anonymous = client("");
  auto wrong = client(kWrongToken);
  auto right = client(kGoodToken);
  auto other = client(kOtherGoodToken);

  const auto calls = EveryApiCall();
  EXPECT_EQ(static_cast<int>(calls.size()), ApiMethodCount()) << "an RPC is missing from this list";
  for (const auto& [rpc, call] : calls) {
    EXPECT_THAT(call(*anonymous), StatusIs(kUnauthenticated, HasSubstr("missing"))) << rpc;
    EXPECT_THAT(call(*wrong), StatusIs(kUnauthenticated, HasSubstr("unknown bearer token"))) << rpc;
    EXPECT_THAT(call(*right), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting"))) << rpc;
    EXPECT_THAT(call(*other), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting"))) << rpc;
    EXPECT_EQ(logs.Matching({"access", absl::StrCat("rpc=", rpc, " "), "code=UNAUTHENTICATED"}).size(), 2u)
        << rpc;
    auto refused = testing::FindMetric(*testing::HttpGet(server->metrics_port(), "/metrics"),
                                       "loraserve_requests_total",
                                       {{"rpc", rpc}, {"code", "UNAUTHENTICATED"}});
    EXPECT_THAT(refused, Optional(2.0)) << rpc;
  }
  // Kubernetes probes carry no token.
  ASSERT_OK_AND_ASSIGN(ServingStatus health, anonymous->Health());
  EXPECT_EQ(health, ServingStatus::kServing);
  ASSERT_OK_AND_ASSIGN(health, wrong->Health());
  EXPECT_EQ(health, ServingStatus::kServing);
  for (const std::string& line : logs.Lines()) {
    EXPECT_EQ(line.find(kGoodToken), std::string::npos) << line;
    EXPECT_EQ(line.find(kWrongToken), std::string::npos) << line;
    EXPECT_EQ(line.find(kOtherGoodToken), std::string::npos) << line;
  }
}

// The real model: the right token passes unary, server-streaming and client-streaming calls.
class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    upload_dir_ = MakeTempDir();
    auto options = TestServer::DefaultOptions();
    options.server.auth_tokens_file = TokensFile();
    options.server.upload_dir = upload_dir_;
    options.client.bearer_token = kGoodToken;
    options.client.retry.max_attempts = 1;
    auto t = TestServer::Start(options);
    ASSERT_TRUE(t.ok()) << t.status();
    env_ = *std::move(t);
  }
  std::unique_ptr<Client> ClientWithToken(const std::string& token) const {
    ClientOptions o;
    o.retry.max_attempts = 1;
    o.bearer_token = token;
    return env_->NewClient(o);
  }

  std::string upload_dir_;
  std::unique_ptr<TestServer> env_;
};

TEST_F(AuthServerTest, TheRightTokenPassesEveryKindOfCall) {
  Client& right = env_->client();
  auto anonymous = ClientWithToken("");
  auto wrong = ClientWithToken(kWrongToken);
  const std::string adapter_dir = PeftRoot() + "/qv_r4/adapter";

  // Unary.
  EXPECT_THAT(anonymous->Tokenize("Once upon", true), StatusIs(kUnauthenticated, HasSubstr("missing")));
  EXPECT_THAT(wrong->Tokenize("Once upon", true), StatusIs(kUnauthenticated, HasSubstr("unknown bearer token")));
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, right.Tokenize("Once upon", true));
  EXPECT_FALSE(ids.empty());

  // Client streaming: refused before a byte is written to the server's disk.
  EXPECT_THAT(anonymous->UploadAdapter("qv", adapter_dir), StatusIs(kUnauthenticated));
  EXPECT_THAT(wrong->UploadAdapter("qv", adapter_dir), StatusIs(kUnauthenticated));
  EXPECT_TRUE(fs::is_empty(upload_dir_));
  ASSERT_OK_AND_ASSIGN(AdapterInfo uploaded, right.UploadAdapter("qv", adapter_dir));
  EXPECT_EQ(uploaded.source, AdapterSource::kUpload);

  // Server streaming.
  GenerateRequest g;
  g.adapter = "qv";
  g.text = "Once upon";
  g.sampling.temperature = 0;
  g.sampling.max_new_tokens = 4;
  g.sampling.ignore_eos = true;
  EXPECT_THAT(anonymous->Generate(g), StatusIs(kUnauthenticated, HasSubstr("missing")));
  EXPECT_THAT(wrong->Generate(g), StatusIs(kUnauthenticated, HasSubstr("unknown bearer token")));
  ASSERT_OK_AND_ASSIGN(GenerateResult r, right.Generate(g));
  EXPECT_EQ(r.completion_tokens, 4);
  auto stream = wrong->StartGenerate(g);
  GeneratedToken token;
  EXPECT_FALSE(stream->Next(&token));
  EXPECT_THAT(stream->Finish(), StatusIs(kUnauthenticated));

  ASSERT_OK_AND_ASSIGN(ServingStatus health, anonymous->Health());
  EXPECT_EQ(health, ServingStatus::kServing);
  ASSERT_OK_AND_ASSIGN(auto refused, env_->Metric("loraserve_requests_total",
                                                  {{"rpc", "Generate"}, {"code", "UNAUTHENTICATED"}}));
  EXPECT_THAT(refused, Optional(3.0));
  for (const std::string& line : env_->logs().Lines()) {
    EXPECT_EQ(line.find(kGoodToken), std::string::npos) << line;
    EXPECT_EQ(line.find(kWrongToken), std::string::npos) << line;
  }
}

}  // namespace
}  // namespace loraserve
