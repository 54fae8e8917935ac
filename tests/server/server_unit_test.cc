// Server building blocks without an engine: status sanitizing, log values, path confinement, and
// the /metrics HTTP endpoint. (The FileChunk helpers are tested in tests/transfer/.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/adapter_service.h"
#include "server/grpc_status.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::server {
namespace {

namespace fs = std::filesystem;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(GrpcStatusTest, KeepsTheCodeAndHidesServerPaths) {
  const std::vector<PathAlias> aliases = {{"/srv/adapters", "<adapter_root>"}};
  grpc::Status s = ToGrpcStatus(
      absl::NotFoundError("adapter x: /srv/adapters/team/a/adapter_config.json: not found"), aliases);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "adapter x: <adapter_root>/team/a/adapter_config.json: not found");
  // Other absolute paths keep only their last component; "/srv/adaptersX" is not the alias.
  EXPECT_EQ(SanitizeStatusMessage("cannot read \"/home/u/secret/w.safetensors\" or /srv/adaptersX/y", aliases),
            "cannot read \".../w.safetensors\" or .../y");
  EXPECT_EQ(SanitizeStatusMessage("ratio 3/4 and a/b stay", {}), "ratio 3/4 and a/b stay");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  for (auto code : {absl::StatusCode::kInvalidArgument, absl::StatusCode::kResourceExhausted,
                    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kUnavailable}) {
    EXPECT_EQ(static_cast<int>(ToGrpcStatus(absl::Status(code, "m")).error_code()), static_cast<int>(code));
  }
}

TEST(GrpcStatusTest, CutsTracesJoinsLinesAndCapsTheLength) {
  EXPECT_EQ(SanitizeStatusMessage("shape mismatch\n  in op\nException raised from foo at bar.cpp:12\nframe #0: x", {}),
            "shape mismatch in op");
  const std::string capped = SanitizeStatusMessage(std::string(3000, 'x'), {}, 100);
  EXPECT_EQ(capped.size(), 100u);
  EXPECT_EQ(capped.substr(97), "...");
  // Never cuts a UTF-8 character in half.
  const std::string utf8 = SanitizeStatusMessage("ab\xc3\xa9\xc3\xa9\xc3\xa9", {}, 7);
  EXPECT_EQ(utf8, "ab\xc3\xa9...");
}

TEST(LoggingTest, LogValuesAreQuotedOnlyWhenNeeded) {
  EXPECT_EQ(LogValue("qv_r4"), "qv_r4");
  EXPECT_EQ(LogValue("two words"), "\"two words\"");
  EXPECT_EQ(LogValue("a=\"b\""), "\"a=\\\"b\\\"\"");
  EXPECT_EQ(LogValue(""), "\"\"");
  std::vector<std::string> lines;
  Logger logger([&](absl::string_view l) { lines.emplace_back(l); });
  logger.Log("event=x");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], ::testing::MatchesRegex("[0-9-]+T[0-9:.]+Z loraserve event=x"));
}

TEST(ResolveUnderRootTest, ConfinesPathsToTheRoot) {
  const std::string root = fs::canonical(MakeTempDir()).string();
  fs::create_directories(root + "/a/b");
  const std::string outside = MakeTempDir();
  fs::create_directory_symlink(outside, root + "/link");
  ASSERT_OK_AND_ASSIGN(std::string ok, ResolveUnderRoot(root, "a/./b/"));
  EXPECT_EQ(ok, root + "/a/b");
  EXPECT_THAT(ResolveUnderRoot(root, "a/../../x"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ResolveUnderRoot(root, "link"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("escapes")));
  EXPECT_THAT(ResolveUnderRoot(root, "/etc"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ResolveUnderRoot(root, "missing"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ResolveUnderRoot("", "a"), StatusIs(absl::StatusCode::kFailedPrecondition));
  auto missing = ResolveUnderRoot(root, "missing");
  EXPECT_EQ(std::string(missing.status().message()).find(root), std::string::npos);
}

TEST(MetricsTest, ExpositionParsesBack) {
  Metrics m({});
  m.RecordRpc("Score", absl::StatusCode::kNotFound, absl::Milliseconds(3));
  m.RecordRpc("Score", absl::StatusCode::kNotFound, absl::Milliseconds(5));
  const std::string text = m.Render();
  EXPECT_EQ(testing::FindMetric(text, "loraserve_requests_total", {{"rpc", "Score"}, {"code", "NOT_FOUND"}}), 2.0);
  EXPECT_EQ(testing::FindMetric(text, "loraserve_request_duration_seconds_count", {{"rpc", "Score"}}), 2.0);
  EXPECT_EQ(testing::FindMetric(text, "loraserve_engine_ready"), 0.0);
}

}  // namespace
}  // namespace loraserve::server
