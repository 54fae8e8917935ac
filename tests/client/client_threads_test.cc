// One Client shared by 16 threads against a real in-process server (stories260K from ../shared):
// every thread's results equal the single-threaded reference.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::testing::TestServer;

TEST(ClientThreadsTest, SixteenThreadsShareOneClient) {
  LORASERVE_REQUIRE_SHARED();
  auto options = TestServer::DefaultOptions();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<TestServer> server, TestServer::Start(options));
  Client& client = server->client();
  ASSERT_OK_AND_ASSIGN(AdapterInfo loaded, client.LoadAdapter("qv", "qv_r4/adapter"));
  EXPECT_EQ(loaded.name, "qv");

  // References, one call at a time.
  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Lily had a",
                                            "One day"};
  std::vector<std::vector<int32_t>> ref_ids;
  std::vector<std::string> ref_text[2];
  for (const auto& p : prompts) {
    ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, client.Tokenize(p, true));
    ref_ids.push_back(ids);
    for (int a = 0; a < 2; ++a) {
      GenerateRequest req;
      req.adapter = a == 0 ? "" : "qv";
      req.token_ids = ids;
      req.sampling.temperature = 0;
      req.sampling.max_new_tokens = 12;
      ASSERT_OK_AND_ASSIGN(GenerateResult r, client.Generate(req));
      ref_text[a].push_back(r.text);
    }
  }

  constexpr int kThreads = 16;
  constexpr int kRounds = 6;
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds && failures[t].empty(); ++round) {
        const size_t p = static_cast<size_t>(t + round) % prompts.size();
        const int a = (t + round) % 2;
        auto ids = client.Tokenize(prompts[p], true);
        if (!ids.ok() || *ids != ref_ids[p]) {
          failures[t] = absl::StrCat("tokenize: ", ids.status().ToString());
          break;
        }
        GenerateRequest req;
        req.adapter = a == 0 ? "" : "qv";
        req.token_ids = *ids;
        req.sampling.temperature = 0;
        req.sampling.max_new_tokens = 12;
        std::string streamed;
        auto r = (t % 2 == 0) ? client.Generate(req, [&](const GeneratedToken& tok) {
          streamed += tok.text;
          return true;
        })
                              : [&]() -> absl::StatusOr<GenerateResult> {
          auto stream = client.StartGenerate(req);
          GeneratedToken tok;
          while (stream->Next(&tok)) streamed += tok.text;
          return stream->Finish();
        }();
        if (!r.ok() || r->text != ref_text[a][p] || streamed != r->text) {
          failures[t] = absl::StrCat("generate ", a, "/", p, ": ", r.status().ToString());
          break;
        }
        ScoreRequest sr;
        sr.adapter = req.adapter;
        sr.token_ids = *ids;
        auto score = client.Score(sr);
        if (!score.ok() || score->token_logprobs.size() + 1 != ids->size()) {
          failures[t] = absl::StrCat("score: ", score.status().ToString());
          break;
        }
        auto list = client.ListAdapters();
        if (!list.ok() || list->size() != 1) {
          failures[t] = absl::StrCat("list: ", list.status().ToString());
          break;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
}

}  // namespace
}  // namespace loraserve
