// Tenants (--tenants_file): the file's rules, name resolution and the limiter as units; then an
// in-process server with four tenants driven by the real client library: per-tenant names, no
// existence leak across tenants, shared adapters, the role-by-call matrix (printed, and checked
// against the table below), adapter and request quotas with retry-after-ms, the OpenAI HTTP API
// under the same tenants, and reloading the file without dropping calls.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "server/tenants.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::server::Access;
using ::loraserve::server::Caller;
using ::loraserve::server::DisplayAdapterName;
using ::loraserve::server::ResolveAdapterName;
using ::loraserve::server::Role;
using ::loraserve::server::TenantDirectory;
using ::loraserve::server::TenantLimiter;
using ::loraserve::server::TenantQuotas;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::IsOkAndHolds;
using ::loraserve::testing::StatusIs;
using ::loraserve::testing::TestServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// "root" admin, "acme" operator (quota: 3 adapters), "acme-app" a user in acme's namespace, "beta"
// operator, "slow" operator (1 concurrent request + 1 queued, 40 tokens a minute). adapter_dir ""
// puts every tenant's LoadAdapter paths at the fixture root.
std::string TenantsJson(const std::string& acme_token = "acme-token") {
  return absl::StrCat(R"({"tenants": [
    {"id": "root", "role": "admin", "tokens": ["root-token"]},
    {"id": "acme", "role": "operator", "tokens": [")", acme_token, R"("], "adapter_dir": "",
     "quotas": {"adapters": 3}},
    {"id": "acme-app", "namespace": "acme", "role": "user", "token_sha256": [
      "7f14c33dfe13ac4af4884e14da5760f9b930205aa8055478c3e74296470d71af"], "adapter_dir": ""},
    {"id": "beta", "role": "operator", "tokens": ["beta-token"], "adapter_dir": ""},
    {"id": "slow", "role": "operator", "tokens": ["slow-token"], "adapter_dir": "",
     "quotas": {"concurrent_requests": 1, "queued_requests": 1, "tokens_per_minute": 40}}
  ]})");
}

TEST(TenantDirectoryTest, ParsesTheFileAndAuthenticatesEachTenant) {
  ASSERT_OK_AND_ASSIGN(auto d, TenantDirectory::FromJson(TenantsJson(), "t.json"));
  EXPECT_TRUE(d->namespaced());
  ASSERT_EQ(d->tenants().size(), 5u);
  ASSERT_OK_AND_ASSIGN(const server::TenantSpec* acme, d->Authenticate("Bearer acme-token"));
  EXPECT_EQ(acme->id, "acme");
  EXPECT_EQ(acme->ns, "acme");
  EXPECT_EQ(acme->role, Role::kOperator);
  EXPECT_EQ(acme->quotas.adapters, 3);
  ASSERT_OK_AND_ASSIGN(const server::TenantSpec* root, d->Authenticate("bearer root-token"));
  EXPECT_EQ(root->role, Role::kAdmin);
  EXPECT_EQ(root->adapter_dir, "");
  // Stored as a digest only: the token itself is nowhere in the file ("app-token").
  ASSERT_OK_AND_ASSIGN(const server::TenantSpec* app, d->Authenticate("Bearer app-token"));
  EXPECT_EQ(app->id, "acme-app");
  EXPECT_EQ(app->ns, "acme");
  ASSERT_OK_AND_ASSIGN(const server::TenantSpec* slow, d->Authenticate("Bearer slow-token"));
  EXPECT_EQ(slow->quotas.concurrent_requests, 1);
  EXPECT_EQ(slow->quotas.tokens_per_minute, 40);
  EXPECT_THAT(d->Authenticate("Bearer nobody"), StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown")));
  EXPECT_THAT(d->Authenticate(std::nullopt), StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("missing")));
}

TEST(TenantDirectoryTest, RefusesEveryMistakeNamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not valid JSON"},
      {"[]", "must be an object"},
      {R"({"tenants": []})", "non-empty list"},
      {R"({"tenant": []})", "unknown key \"tenant\""},
      {R"({"tenants": [{"role": "user", "tokens": ["a"]}]})", "\"id\""},
      {R"({"tenants": [{"id": "a/b", "role": "user", "tokens": ["a"]}]})", "\"id\" must be"},
      {R"({"tenants": [{"id": "shared", "role": "user", "tokens": ["a"]}]})", "reserved"},
      {R"({"tenants": [{"id": "a", "namespace": "shared", "role": "user", "tokens": ["a"]}]})", "reserved"},
      {R"({"tenants": [{"id": "a", "role": "root", "tokens": ["a"]}]})", "admin, operator or user"},
      {R"({"tenants": [{"id": "a", "role": "user"}]})", "at least one token"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["two words"]}]})", "printable ASCII"},
      {R"({"tenants": [{"id": "a", "role": "user", "token_sha256": ["abc"]}]})", "64 hex digits"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"]}, {"id": "a", "role": "user", "tokens": ["y"]}]})",
       "duplicate id"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"]}, {"id": "b", "role": "user", "tokens": ["x"]}]})",
       "listed twice"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "quota": {}}]})", "unknown key \"quota\""},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "quotas": {"adapter": 1}}]})",
       "unknown key \"adapter\""},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "quotas": {"adapters": -1}}]})", ">= 0"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "quotas": {"adapters": 1.5}}]})", ">= 0"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "quotas": {"queued_requests": 2}}]})",
       "needs quotas.concurrent_requests"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "weight": 0}]})", "\"weight\""},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "adapter_dir": "../up"}]})", "stay below"},
      {R"({"tenants": [{"id": "a", "role": "user", "tokens": ["x"], "adapter_dir": "/abs"}]})", "stay below"},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_THAT(TenantDirectory::FromJson(text, "bad.json"), StatusIs(kInvalid, HasSubstr(expected))) << text;
    EXPECT_THAT(TenantDirectory::FromJson(text, "bad.json"), StatusIs(kInvalid, HasSubstr("bad.json"))) << text;
  }
}

TEST(TenantNamesTest, ResolveAndDisplayFollowTheNamespaceRules) {
  ASSERT_OK_AND_ASSIGN(auto d, TenantDirectory::FromJson(TenantsJson(), "t.json"));
  auto caller = [&](const char* id) {
    Caller c;
    c.directory = d;
    c.tenant = d->Find(id);
    return c;
  };
  const Caller acme = caller("acme"), app = caller("acme-app"), root = caller("root");
  EXPECT_THAT(ResolveAdapterName(acme, "x", Access::kUse, "name"), IsOkAndHolds(std::string("acme/x")));
  EXPECT_THAT(ResolveAdapterName(app, "x", Access::kUse, "name"), IsOkAndHolds(std::string("acme/x")));
  EXPECT_THAT(ResolveAdapterName(acme, "acme/x", Access::kManage, "name"), IsOkAndHolds(std::string("acme/x")));
  EXPECT_THAT(ResolveAdapterName(acme, "shared/s", Access::kUse, "name"), IsOkAndHolds(std::string("shared/s")));
  EXPECT_THAT(ResolveAdapterName(acme, "shared/s", Access::kManage, "name"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("read-only")));
  EXPECT_THAT(ResolveAdapterName(acme, "shared/s", Access::kCreate, "name"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(ResolveAdapterName(root, "shared/s", Access::kCreate, "name"), IsOkAndHolds(std::string("shared/s")));
  // Another tenant's namespace reads as missing, whatever it holds; creating in it is malformed.
  EXPECT_THAT(ResolveAdapterName(acme, "beta/x", Access::kUse, "name"),
              StatusIs(absl::StatusCode::kNotFound, "adapter beta/x not found"));
  EXPECT_THAT(ResolveAdapterName(acme, "beta/x", Access::kCreate, "name"), StatusIs(kInvalid, HasSubstr("per tenant")));
  EXPECT_THAT(ResolveAdapterName(root, "beta/x", Access::kManage, "name"), IsOkAndHolds(std::string("beta/x")));
  for (const char* bad : {"a/b/c", "/x", "x/", "a b", "shared/"}) {
    EXPECT_THAT(ResolveAdapterName(acme, bad, Access::kUse, "name"), StatusIs(kInvalid)) << bad;
  }
  EXPECT_THAT(ResolveAdapterName(acme, "", Access::kUse, "adapter", /*allow_empty=*/true),
              IsOkAndHolds(std::string("")));
  EXPECT_THAT(DisplayAdapterName(acme, "acme/x"), ::testing::Optional(std::string("x")));
  EXPECT_THAT(DisplayAdapterName(acme, "shared/s"), ::testing::Optional(std::string("shared/s")));
  EXPECT_EQ(DisplayAdapterName(acme, "beta/x"), std::nullopt);
  EXPECT_THAT(DisplayAdapterName(root, "beta/x"), ::testing::Optional(std::string("beta/x")));

  // Without a tenants file names are used as given, and a slash stays invalid.
  Caller single;
  single.directory = TenantDirectory::SingleTenant({});
  single.tenant = &single.directory->tenants().front();
  EXPECT_THAT(ResolveAdapterName(single, "x", Access::kCreate, "name"), IsOkAndHolds(std::string("x")));
  EXPECT_THAT(ResolveAdapterName(single, "a/x", Access::kUse, "name"), StatusIs(kInvalid));
  EXPECT_THAT(DisplayAdapterName(single, "x"), ::testing::Optional(std::string("x")));
}

TEST(TenantLimiterTest, SlotsQueueWithdrawAndTheTokenBucket) {
  TenantLimiter limiter;
  TenantQuotas q;
  q.concurrent_requests = 2;
  q.queued_requests = 1;
  limiter.SetQuotas(q);
  uint64_t t1 = 0, t2 = 0;
  absl::Duration retry;
  int resumed = 0;
  EXPECT_THAT(limiter.Enter([] {}, &t1, &retry), IsOkAndHolds(true));
  EXPECT_THAT(limiter.Enter([] {}, &t1, &retry), IsOkAndHolds(true));
  EXPECT_THAT(limiter.Enter([&] { ++resumed; }, &t1, &retry), IsOkAndHolds(false));
  EXPECT_THAT(limiter.Enter([] {}, &t2, &retry),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("2 running, 1 queued")));
  EXPECT_EQ(limiter.waiting(), 1);
  std::function<void()> next = limiter.Leave();  // the waiter takes the freed slot
  ASSERT_TRUE(next);
  next();
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(limiter.running(), 2);
  EXPECT_FALSE(limiter.Withdraw(t1));  // admitted already
  EXPECT_THAT(limiter.Enter([&] { ++resumed; }, &t2, &retry), IsOkAndHolds(false));
  EXPECT_TRUE(limiter.Withdraw(t2));  // gave up while waiting: never resumes
  EXPECT_FALSE(limiter.Leave());
  EXPECT_FALSE(limiter.Leave());
  EXPECT_EQ(limiter.running(), 0);

  // A raised limit (a reload) admits waiting requests at once.
  q.concurrent_requests = 1;
  q.queued_requests = 2;
  limiter.SetQuotas(q);
  EXPECT_THAT(limiter.Enter([] {}, &t1, &retry), IsOkAndHolds(true));
  EXPECT_THAT(limiter.Enter([&] { ++resumed; }, &t1, &retry), IsOkAndHolds(false));
  EXPECT_THAT(limiter.Enter([&] { ++resumed; }, &t2, &retry), IsOkAndHolds(false));
  q.concurrent_requests = 2;
  std::vector<std::function<void()>> admitted = limiter.SetQuotas(q);
  ASSERT_EQ(admitted.size(), 1u);
  admitted[0]();
  EXPECT_EQ(resumed, 2);
  EXPECT_EQ(limiter.running(), 2);
  EXPECT_EQ(limiter.waiting(), 1);
  q.concurrent_requests = 0;  // unlimited
  EXPECT_EQ(limiter.SetQuotas(q).size(), 1u);
  EXPECT_EQ(limiter.waiting(), 0);
  while (limiter.running() > 0) (void)limiter.Leave();

  q = TenantQuotas();
  q.tokens_per_minute = 600;  // 10 a second
  limiter.SetQuotas(q);
  EXPECT_THAT(limiter.Enter([] {}, &t1, &retry), IsOkAndHolds(true));
  limiter.Charge(700);  // 100 in debt
  (void)limiter.Leave();
  EXPECT_THAT(limiter.Enter([] {}, &t1, &retry),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tokens_per_minute quota (600)")));
  // About 10 s until the bucket is positive again.
  EXPECT_GT(retry, absl::Seconds(9));
  EXPECT_LE(retry, absl::Seconds(11));
}

// The matrix: each role by each call on an own, a foreign and a shared adapter.
class TenantServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    tenants_file_ = WriteFile(MakeTempDir() + "/tenants.json", TenantsJson());
    auto options = TestServer::DefaultOptions();
    options.server.tenants_file = tenants_file_;
    audit_path_ = MakeTempDir() + "/audit.jsonl";
    options.server.audit_log = audit_path_;
    options.client.bearer_token = "root-token";
    options.client.retry.max_attempts = 1;
    auto t = TestServer::Start(options);
    ASSERT_TRUE(t.ok()) << t.status();
    env_ = *std::move(t);
    root_ = &env_->client();
    acme_ = As("acme-token");
    app_ = As("app-token");
    beta_ = As("beta-token");
  }
  std::unique_ptr<Client> As(const std::string& token) const {
    ClientOptions o;
    o.retry.max_attempts = 1;
    o.bearer_token = token;
    o.default_deadline = absl::Seconds(60);
    return env_->NewClient(o);
  }
  // Logits of "Once upon a time" through `adapter`, as `client` sees it.
  absl::StatusOr<std::vector<float>> Logits(Client& client, const std::string& adapter) {
    return testing::ScoreLogits(client, adapter);
  }
  std::vector<std::string> Names(Client& client) {
    std::vector<std::string> out;
    auto list = client.ListAdapters();
    EXPECT_OK(list.status());
    if (list.ok()) {
      for (const AdapterInfo& a : *list) out.push_back(a.name);
    }
    return out;
  }
  int HttpPort() { return env_->server().metrics_port(); }
  absl::StatusOr<testing::HttpReply> Http(const std::string& token, const std::string& method,
                                          const std::string& path, const std::string& body = "") {
    return testing::HttpRequest(HttpPort(), method, path, body, {{"Authorization", "Bearer " + token}});
  }

  std::string tenants_file_;
  std::string audit_path_;
  std::unique_ptr<TestServer> env_;
  Client* root_ = nullptr;
  std::unique_ptr<Client> acme_, app_, beta_;
};

TEST_F(TenantServerTest, NamesArePerTenantAndForeignOnesAnswerLikeMissingOnes) {
  ASSERT_OK(acme_->LoadAdapter("x", "qv_r4/adapter").status());
  ASSERT_OK(beta_->LoadAdapter("x", "qv_r4_b/adapter").status());
  ASSERT_OK(beta_->LoadAdapter("only-beta", "lora_bias/adapter").status());
  ASSERT_OK(root_->LoadAdapter("shared/s", "qv_r4_b/adapter").status());

  // Same name, different adapters; acme's user sees acme's.
  ASSERT_OK_AND_ASSIGN(std::vector<float> acme_x, Logits(*acme_, "x"));
  ASSERT_OK_AND_ASSIGN(std::vector<float> beta_x, Logits(*beta_, "x"));
  ASSERT_OK_AND_ASSIGN(std::vector<float> app_x, Logits(*app_, "x"));
  ASSERT_OK_AND_ASSIGN(std::vector<float> root_acme_x, Logits(*root_, "acme/x"));
  EXPECT_NE(acme_x, beta_x);
  EXPECT_EQ(acme_x, app_x);
  EXPECT_EQ(acme_x, root_acme_x);
  ASSERT_OK_AND_ASSIGN(std::vector<float> shared_by_acme, Logits(*acme_, "shared/s"));
  ASSERT_OK_AND_ASSIGN(std::vector<float> shared_by_beta, Logits(*beta_, "shared/s"));
  EXPECT_EQ(shared_by_acme, shared_by_beta);

  EXPECT_THAT(Names(*acme_), ElementsAre("shared/s", "x"));
  EXPECT_THAT(Names(*app_), ElementsAre("shared/s", "x"));
  EXPECT_THAT(Names(*beta_), ElementsAre("only-beta", "shared/s", "x"));
  EXPECT_THAT(Names(*root_), ElementsAre("acme/x", "beta/only-beta", "beta/x", "shared/s"));
  ASSERT_OK_AND_ASSIGN(AdapterInfo got, acme_->GetAdapter("x"));
  EXPECT_EQ(got.name, "x");
  EXPECT_EQ(got.path, "qv_r4/adapter");

  // No existence leak: beta's adapter, by its bare name or by beta's namespace, answers exactly as
  // an adapter nobody has, on every call that names one.
  auto same_answer = [&](const std::function<absl::Status(const std::string&)>& call, const std::string& what) {
    for (const auto& [foreign, missing] : std::vector<std::pair<std::string, std::string>>{
             {"only-beta", "nobody-has"}, {"beta/x", "beta/nobody-has"}}) {
      const absl::Status a = call(foreign), b = call(missing);
      EXPECT_EQ(a.code(), absl::StatusCode::kNotFound) << what << " " << a;
      EXPECT_EQ(a.code(), b.code()) << what;
      EXPECT_EQ(absl::StrReplaceAll(a.message(), {{foreign, "NAME"}}),
                absl::StrReplaceAll(b.message(), {{missing, "NAME"}}))
          << what;
      EXPECT_THAT(std::string(a.message()), ::testing::Not(HasSubstr("acme/"))) << what;
    }
  };
  same_answer([&](const std::string& n) { return acme_->GetAdapter(n).status(); }, "GetAdapter");
  same_answer([&](const std::string& n) { return acme_->DeleteAdapter(n); }, "DeleteAdapter");
  same_answer([&](const std::string& n) { return Logits(*acme_, n).status(); }, "Score");
  same_answer(
      [&](const std::string& n) {
        GenerateRequest g;
        g.adapter = n;
        g.text = "Once";
        g.sampling.max_new_tokens = 1;
        return acme_->Generate(g).status();
      },
      "Generate");
  same_answer(
      [&](const std::string& n) {
        CombineRequest r;
        r.name = "c";
        r.sources = {{"x", 1.0}, {n, 1.0}};
        return acme_->CombineAdapters(r).status();
      },
      "CombineAdapters");
  same_answer([&](const std::string& n) { return acme_->SaveAdapter(n, MakeTempDir()).status(); }, "SaveAdapter");
  same_answer([&](const std::string& n) { return acme_->ExportMergedModel({n}, MakeTempDir()).status(); },
              "ExportMergedModel");
  // beta's adapters are untouched by all of that.
  EXPECT_THAT(Names(*beta_), ElementsAre("only-beta", "shared/s", "x"));

  // A combination of an own and a shared adapter lands in the caller's namespace.
  CombineRequest combine;
  combine.name = "mix";
  combine.sources = {{"x", 0.5}, {"shared/s", 0.5}};
  combine.combination_type = "cat";
  ASSERT_OK_AND_ASSIGN(AdapterInfo mix, acme_->CombineAdapters(combine));
  EXPECT_EQ(mix.name, "mix");
  EXPECT_THAT(Names(*root_), ::testing::Contains("acme/mix"));
  EXPECT_THAT(Names(*beta_), ::testing::Not(::testing::Contains("mix")));

  // The OpenAI API: the same names, the same 404 for foreign and missing models.
  ASSERT_OK_AND_ASSIGN(testing::HttpReply models, Http("acme-token", "GET", "/v1/models"));
  EXPECT_EQ(models.status, 200);
  EXPECT_THAT(models.body, HasSubstr("\"id\":\"x\""));
  EXPECT_THAT(models.body, HasSubstr("\"id\":\"shared/s\""));
  EXPECT_THAT(models.body, ::testing::Not(HasSubstr("only-beta")));
  EXPECT_THAT(models.body, ::testing::Not(HasSubstr("acme/")));
  auto completion = [&](const std::string& model) {
    return Http("acme-token", "POST", "/v1/completions",
                absl::StrCat(R"({"model": ")", model, R"(", "prompt": "Once", "max_tokens": 2, "temperature": 0})"));
  };
  ASSERT_OK_AND_ASSIGN(testing::HttpReply own, completion("x"));
  EXPECT_EQ(own.status, 200) << own.body;
  EXPECT_THAT(own.body, HasSubstr("\"model\":\"x\""));
  ASSERT_OK_AND_ASSIGN(testing::HttpReply foreign, completion("only-beta"));
  ASSERT_OK_AND_ASSIGN(testing::HttpReply missing, completion("nobody-has"));
  EXPECT_EQ(foreign.status, 404);
  EXPECT_EQ(absl::StrReplaceAll(foreign.body, {{"only-beta", "NAME"}}),
            absl::StrReplaceAll(missing.body, {{"nobody-has", "NAME"}}));
  ASSERT_OK_AND_ASSIGN(testing::HttpReply user_load,
                       Http("app-token", "POST", "/v1/load_lora_adapter",
                            R"({"lora_name": "y", "lora_path": "qv_r4/adapter"})"));
  EXPECT_EQ(user_load.status, 403) << user_load.body;
  ASSERT_OK_AND_ASSIGN(testing::HttpReply unload_foreign,
                       Http("acme-token", "POST", "/v1/unload_lora_adapter", R"({"lora_name": "only-beta"})"));
  EXPECT_EQ(unload_foreign.status, 404) << unload_foreign.body;
  EXPECT_THAT(Names(*beta_), ::testing::Contains("only-beta"));
}

// Expected codes of the matrix: per call, the code for (admin, operator, user) on (own, foreign,
// shared); "-" where the call names no adapter.
struct MatrixRow {
  std::string call;
  std::map<std::string, std::vector<std::string>> by_role;  // role -> {own, foreign, shared}
};

TEST_F(TenantServerTest, TheRoleByCallMatrix) {
  // Each cell starts from the same adapters: root/r, acme/a, beta/b, shared/s (all qv_r4).
  auto reset = [&] {
    ASSERT_OK(root_->UnloadAll().status());
    ASSERT_OK(root_->LoadAdapter("r", "qv_r4/adapter").status());
    ASSERT_OK(acme_->LoadAdapter("a", "qv_r4/adapter").status());
    ASSERT_OK(beta_->LoadAdapter("b", "qv_r4/adapter").status());
    ASSERT_OK(root_->LoadAdapter("shared/s", "qv_r4/adapter").status());
  };
  struct Who {
    std::string role;
    Client* client;
    std::string own, foreign;
  };
  const std::vector<Who> who = {
      {"admin", root_, "r", "acme/a"}, {"operator", acme_.get(), "a", "b"}, {"user", app_.get(), "a", "b"}};
  using Call = std::function<absl::Status(Client&, const std::string&)>;
  const std::vector<std::pair<std::string, Call>> calls = {
      {"Generate",
       [](Client& c, const std::string& n) {
         GenerateRequest g;
         g.adapter = n;
         g.text = "Once";
         g.sampling.max_new_tokens = 1;
         return c.Generate(g).status();
       }},
      {"Score",
       [](Client& c, const std::string& n) {
         ScoreRequest r;
         r.adapter = n;
         r.token_ids = {1, 2};
         return c.Score(r).status();
       }},
      {"GetAdapter", [](Client& c, const std::string& n) { return c.GetAdapter(n).status(); }},
      {"LoadAdapter", [](Client& c, const std::string& n) { return c.LoadAdapter(n, "qv_r4_b/adapter").status(); }},
      {"UploadAdapter",
       [](Client& c, const std::string& n) {
         return c.UploadAdapter(n, testing::PeftRoot() + "/qv_r4_b/adapter").status();
       }},
      {"MergeAdapter", [](Client& c, const std::string& n) { return c.MergeAdapter(n).status(); }},
      {"UnmergeAdapter", [](Client& c, const std::string& n) { return c.UnmergeAdapter(n).status(); }},
      {"CombineAdapters",
       [](Client& c, const std::string& n) {
         CombineRequest r;
         r.name = n;  // over an existing adapter
         r.sources = {{"shared/s", 1.0}};
         return c.CombineAdapters(r).status();
       }},
      {"CombineFrom",
       [](Client& c, const std::string& n) {
         CombineRequest r;
         r.name = "fresh";
         r.sources = {{n, 1.0}};
         return c.CombineAdapters(r).status();
       }},
      {"SaveAdapter", [](Client& c, const std::string& n) { return c.SaveAdapter(n, MakeTempDir()).status(); }},
      {"ExportMergedModel",
       [](Client& c, const std::string& n) { return c.ExportMergedModel({n}, MakeTempDir()).status(); }},
      {"DeleteAdapter", [](Client& c, const std::string& n) { return c.DeleteAdapter(n); }},
  };
  // The decisions (README "Tenants"): admins everything; operators manage their namespace and read
  // shared adapters; users only run and read; merges are admin-only; another tenant's adapter is
  // NOT_FOUND for everyone but admins; creating over an existing name with other content is
  // ALREADY_EXISTS.
  const std::map<std::string, std::map<std::string, std::vector<std::string>>> expected = {
      {"Generate", {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}}, {"user", {"OK", "NOT_FOUND", "OK"}}}},
      {"Score", {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}}, {"user", {"OK", "NOT_FOUND", "OK"}}}},
      {"GetAdapter", {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}}, {"user", {"OK", "NOT_FOUND", "OK"}}}},
      {"LoadAdapter",
       {{"admin", {"ALREADY_EXISTS", "ALREADY_EXISTS", "ALREADY_EXISTS"}},
        {"operator", {"ALREADY_EXISTS", "OK", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"UploadAdapter",
       {{"admin", {"ALREADY_EXISTS", "ALREADY_EXISTS", "ALREADY_EXISTS"}},
        {"operator", {"ALREADY_EXISTS", "OK", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"MergeAdapter",
       {{"admin", {"OK", "OK", "OK"}},
        {"operator", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"UnmergeAdapter",
       {{"admin", {"OK", "OK", "OK"}},
        {"operator", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"CombineAdapters",
       {{"admin", {"ALREADY_EXISTS", "ALREADY_EXISTS", "ALREADY_EXISTS"}},
        {"operator", {"ALREADY_EXISTS", "OK", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"CombineFrom",
       {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"SaveAdapter",
       {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"ExportMergedModel",
       {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "OK"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
      {"DeleteAdapter",
       {{"admin", {"OK", "OK", "OK"}}, {"operator", {"OK", "NOT_FOUND", "PERMISSION_DENIED"}},
        {"user", {"PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"}}}},
  };
  std::string table = "call | role | own | foreign | shared\n";
  for (const auto& [name, call] : calls) {
    for (const Who& w : who) {
      std::vector<std::string> got;
      for (const std::string& target : {w.own, w.foreign, std::string("shared/s")}) {
        reset();
        if (name == "UnmergeAdapter") {
          ASSERT_OK(root_->MergeAdapter(w.role == "admin" ? target : "shared/s").status());
        }
        const absl::Status s = call(*w.client, target);
        got.push_back(absl::StatusCodeToString(s.code()));
        if (name == "UnmergeAdapter") (void)root_->UnmergeAdapter("shared/s");
        if (name == "MergeAdapter" && s.ok()) {
          ASSERT_OK(root_->UnmergeAdapter(target).status());
        }
      }
      absl::StrAppend(&table, name, " | ", w.role, " | ", absl::StrJoin(got, " | "), "\n");
      EXPECT_EQ(got, expected.at(name).at(w.role)) << name << " as " << w.role;
    }
  }
  // Calls that name no adapter.
  reset();
  for (const Who& w : who) {
    const absl::Status list = w.client->ListAdapters().status();
    const absl::Status tokenize = w.client->Tokenize("Once", true).status();
    const absl::Status unload = w.client->UnloadAll().status();
    absl::StrAppend(&table, "ListAdapters/Tokenize/UnloadAll | ", w.role, " | ", absl::StatusCodeToString(list.code()),
                    " | ", absl::StatusCodeToString(tokenize.code()), " | ", absl::StatusCodeToString(unload.code()),
                    "\n");
    EXPECT_OK(list);
    EXPECT_OK(tokenize);
    EXPECT_EQ(unload.code(), w.role == "admin" ? absl::StatusCode::kOk : absl::StatusCode::kPermissionDenied);
  }
  std::cout << "tenancy matrix (code for the caller's own / another tenant's / a shared adapter):\n" << table;
}

TEST_F(TenantServerTest, QuotasAnswerResourceExhaustedWithRetryAfter) {
  // acme may own 3 adapters.
  ASSERT_OK(acme_->LoadAdapter("a1", "qv_r4/adapter").status());
  ASSERT_OK(acme_->UploadAdapter("a2", testing::PeftRoot() + "/qv_r4_b/adapter").status());
  CombineRequest combine;
  combine.name = "a3";
  combine.sources = {{"a1", 1.0}};
  ASSERT_OK(acme_->CombineAdapters(combine).status());
  CallInfo info;
  CallOptions call;
  call.info = &info;
  EXPECT_THAT(acme_->LoadAdapter("a4", "lora_bias/adapter", call),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("adapters quota (3)")));
  EXPECT_TRUE(info.retry_after.has_value());
  EXPECT_THAT(acme_->UploadAdapter("a4", testing::PeftRoot() + "/lora_bias/adapter"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  combine.name = "a4";
  EXPECT_THAT(acme_->CombineAdapters(combine), StatusIs(absl::StatusCode::kResourceExhausted));
  // The app user shares acme's namespace and sees the same three; beta is unaffected.
  EXPECT_EQ(Names(*app_).size(), 3u);
  ASSERT_OK(beta_->LoadAdapter("a4", "lora_bias/adapter").status());
  ASSERT_OK(acme_->DeleteAdapter("a3"));
  ASSERT_OK(acme_->LoadAdapter("a4", "lora_bias/adapter").status());

  // slow: one request runs, one waits, a third is refused; the waiting one runs once the first ends.
  auto slow = As("slow-token");
  env_->engine().PauseAfterNextStep();
  GenerateRequest g;
  g.text = "Once";
  g.sampling.max_new_tokens = 3;
  g.sampling.temperature = 0;
  g.sampling.ignore_eos = true;
  absl::StatusOr<GenerateResult> first, second;
  std::thread t1([&] { first = slow->Generate(g); });
  ASSERT_TRUE(env_->engine().WaitUntilPaused());
  std::thread t2([&] { second = slow->Generate(g); });
  // The second waits in the tenant's queue (not in the engine, which is paused).
  absl::SleepFor(absl::Milliseconds(300));
  CallInfo refused_info;
  CallOptions refused_call;
  refused_call.info = &refused_info;
  EXPECT_THAT(slow->Generate(g, nullptr, refused_call),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("concurrent_requests quota (1 running, 1 queued)")));
  EXPECT_TRUE(refused_info.retry_after.has_value());
  ScoreRequest s;
  s.token_ids = {1, 2};
  env_->engine().Resume();
  t1.join();
  t2.join();
  ASSERT_OK(first.status());
  ASSERT_OK(second.status());
  // 2 requests x (prompt + 3 tokens) spent... the 40-token bucket is not yet empty; burn it.
  g.sampling.max_new_tokens = 40;
  (void)slow->Generate(g);
  CallInfo tpm_info;
  CallOptions tpm_call;
  tpm_call.info = &tpm_info;
  EXPECT_THAT(slow->Generate(g, nullptr, tpm_call),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tokens_per_minute quota (40)")));
  ASSERT_TRUE(tpm_info.retry_after.has_value());
  EXPECT_GT(*tpm_info.retry_after, absl::Seconds(1));
  // Other tenants still run.
  EXPECT_OK(beta_->Score(s).status());
  ASSERT_OK_AND_ASSIGN(testing::HttpReply http,
                       Http("slow-token", "POST", "/v1/completions",
                            absl::StrCat(R"({"model": ")", env_->engine().model_name(),
                                         R"(", "prompt": "Once", "max_tokens": 2})")));
  EXPECT_EQ(http.status, 429) << http.body;
  EXPECT_TRUE(http.headers.count("retry-after-ms")) << http.body;
}

TEST_F(TenantServerTest, AuditLogAndPerTenantMetrics) {
  ASSERT_OK(acme_->LoadAdapter("x", "qv_r4/adapter").status());
  EXPECT_THAT(app_->DeleteAdapter("x"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(acme_->MergeAdapter("x"), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(As("nobody")->DeleteAdapter("x"), StatusIs(absl::StatusCode::kUnauthenticated));
  ASSERT_OK(acme_->Generate([] {
                  GenerateRequest g;
                  g.adapter = "x";
                  g.token_ids = {1, 403, 407};
                  g.sampling.max_new_tokens = 4;
                  g.sampling.ignore_eos = true;
                  return g;
                }())
                .status());
  ASSERT_OK_AND_ASSIGN(testing::HttpReply unload,
                       Http("acme-token", "POST", "/v1/unload_lora_adapter", R"({"lora_name": "x"})"));
  EXPECT_EQ(unload.status, 200) << unload.body;

  std::ifstream in(audit_path_);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 5u) << "Generate is not a management call";
  auto at = [&](size_t i, const char* key) { return lines[i][key]; };
  EXPECT_EQ(at(0, "call"), "LoadAdapter");
  EXPECT_EQ(at(0, "tenant"), "acme");
  EXPECT_EQ(at(0, "role"), "operator");
  EXPECT_EQ(at(0, "adapter"), "acme/x");
  EXPECT_EQ(at(0, "code"), "OK");
  EXPECT_EQ(at(0, "via"), "grpc");
  EXPECT_EQ(at(1, "call"), "DeleteAdapter");
  EXPECT_EQ(at(1, "tenant"), "acme-app");
  EXPECT_EQ(at(1, "code"), "PERMISSION_DENIED");
  EXPECT_THAT(at(1, "message").get<std::string>(), HasSubstr("operator role"));
  EXPECT_EQ(at(2, "call"), "MergeAdapter");
  EXPECT_EQ(at(2, "code"), "PERMISSION_DENIED");
  EXPECT_TRUE(at(3, "tenant").is_null());
  EXPECT_EQ(at(3, "code"), "UNAUTHENTICATED");
  EXPECT_EQ(at(4, "via"), "http");
  EXPECT_EQ(at(4, "call"), "unload_lora_adapter");
  EXPECT_EQ(at(4, "adapter"), "acme/x");
  EXPECT_EQ(at(4, "code"), "OK");
  for (const auto& l : lines) EXPECT_FALSE(l["time"].get<std::string>().empty());

  ASSERT_OK_AND_ASSIGN(auto ok, env_->Metric("loraserve_tenant_requests_total", {{"tenant", "acme"}, {"code", "OK"}}));
  EXPECT_THAT(ok, ::testing::Optional(3.0));  // load, generate, unload
  ASSERT_OK_AND_ASSIGN(auto denied, env_->Metric("loraserve_tenant_requests_total",
                                                 {{"tenant", "acme-app"}, {"code", "PERMISSION_DENIED"}}));
  EXPECT_THAT(denied, ::testing::Optional(1.0));
  ASSERT_OK_AND_ASSIGN(auto prompt, env_->Metric("loraserve_tenant_tokens_total", {{"tenant", "acme"}, {"kind", "prompt"}}));
  EXPECT_THAT(prompt, ::testing::Optional(3.0));
  ASSERT_OK_AND_ASSIGN(auto generated,
                       env_->Metric("loraserve_tenant_tokens_total", {{"tenant", "acme"}, {"kind", "generated"}}));
  EXPECT_THAT(generated, ::testing::Optional(4.0));
  ASSERT_OK_AND_ASSIGN(auto queued, env_->Metric("loraserve_tenant_queue_time_seconds_count", {{"tenant", "acme"}}));
  EXPECT_THAT(queued, ::testing::Optional(1.0));
}

TEST_F(TenantServerTest, ReloadSwapsTenantsAndABadFileKeepsThem) {
  ASSERT_OK(acme_->LoadAdapter("x", "qv_r4/adapter").status());
  // acme's token rotates: the old one stops working, the new one sees the same adapters.
  WriteFile(tenants_file_, TenantsJson("acme-token-2"));
  ASSERT_OK(env_->server().ReloadTenants());
  EXPECT_THAT(acme_->ListAdapters(), StatusIs(absl::StatusCode::kUnauthenticated));
  auto acme2 = As("acme-token-2");
  EXPECT_THAT(Names(*acme2), ElementsAre("x"));
  // A broken file is refused and logged; the current tenants stay.
  WriteFile(tenants_file_, R"({"tenants": [{"id": "acme", "role": "superuser", "tokens": ["t"]}]})");
  EXPECT_THAT(env_->server().ReloadTenants(), StatusIs(kInvalid, HasSubstr("admin, operator or user")));
  EXPECT_FALSE(env_->logs().Matching({"event=tenants_reload_failed", "superuser"}).empty());
  EXPECT_THAT(Names(*acme2), ElementsAre("x"));
  WriteFile(tenants_file_, "{ truncated");
  EXPECT_THAT(env_->server().ReloadTenants(), StatusIs(kInvalid));
  EXPECT_OK(beta_->ListAdapters().status());
}

TEST(TenantServerStartTest, BadTenantsFilesFailStartUp) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tenants_file = MakeTempDir() + "/missing.json";
  EXPECT_THAT(server::Server::Start(options), StatusIs(kInvalid, HasSubstr("missing.json")));
  options.tenants_file = WriteFile(MakeTempDir() + "/t.json", R"({"tenants": [{"id": "a"}]})");
  EXPECT_THAT(server::Server::Start(options), StatusIs(kInvalid, HasSubstr("role")));
  options.tenants_file = WriteFile(MakeTempDir() + "/t.json", TenantsJson());
  options.auth_tokens_file = WriteFile(MakeTempDir() + "/tokens", "t\n");
  EXPECT_THAT(server::Server::Start(options), StatusIs(kInvalid, HasSubstr("exclude each other")));
}

}  // namespace
}  // namespace loraserve
