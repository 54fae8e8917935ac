// Server building blocks without an engine: status sanitizing, log values, the upload writer and
// directory reader, path confinement, and the /metrics HTTP endpoint.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "server/adapter_service.h"
#include "server/file_transfer.h"
#include "server/grpc_status.h"
#include "server/http_endpoint.h"
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

loraserve::v1::FileChunk Chunk(const std::string& path, int64_t offset, const std::string& data, bool eof,
                               const std::string& sha = "") {
  loraserve::v1::FileChunk c;
  c.set_path(path);
  c.set_offset(offset);
  c.set_data(data);
  c.set_eof(eof);
  c.set_size(offset + static_cast<int64_t>(data.size()));
  c.set_sha256(sha);
  return c;
}

std::string Sha(const std::string& data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

TEST(FileTransferTest, Sha256OfKnownStrings) {
  EXPECT_EQ(Sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(FileTransferTest, UploadWriterThenDirectoryReaderRoundTrip) {
  const std::string in = MakeTempDir();
  UploadWriter writer(in, 100);
  ASSERT_OK(writer.Add(Chunk("a.json", 0, "hel", false)));
  ASSERT_OK(writer.Add(Chunk("a.json", 3, "lo", true, Sha("hello"))));
  ASSERT_OK(writer.Add(Chunk("sub/empty.bin", 0, "", true, Sha(""))));
  EXPECT_THAT(writer.Add(Chunk("a.json", 0, "x", true, Sha("x"))), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("already")));
  ASSERT_OK(writer.Finish(5));
  EXPECT_THAT(writer.Finish(6), StatusIs(absl::StatusCode::kInvalidArgument));

  // Read back in 2-byte chunks: sizes, offsets and digests check out.
  ASSERT_OK_AND_ASSIGN(auto reader, DirectoryReader::Open(in, 2));
  std::map<std::string, std::string> files;
  loraserve::v1::FileChunk c;
  int chunks = 0;
  while (true) {
    ASSERT_OK_AND_ASSIGN(bool more, reader->Next(&c));
    if (!more) break;
    ++chunks;
    EXPECT_EQ(c.offset(), static_cast<int64_t>(files[c.path()].size()));
    files[c.path()] += c.data();
    if (c.eof()) {
      EXPECT_EQ(c.sha256(), Sha(files[c.path()]));
      EXPECT_EQ(c.size(), static_cast<int64_t>(files[c.path()].size()));
    }
  }
  EXPECT_EQ(files["a.json"], "hello");
  EXPECT_EQ(files["sub/empty.bin"], "");
  EXPECT_EQ(chunks, 4);  // "he", "ll", "o" (eof), "" (eof)
  EXPECT_EQ(reader->total_bytes(), 5);
  EXPECT_EQ(writer.sha256s(), (std::map<std::string, std::string>{{"a.json", Sha("hello")},
                                                                  {"sub/empty.bin", Sha("")}}));
}

TEST(FileTransferTest, AdapterChecksumFromDigestsOrFromTheDirectory) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/adapter_config.json") << "{}";
  EXPECT_THAT(AdapterChecksumOfDir(dir),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("adapter_model.safetensors")));
  std::ofstream(dir + "/adapter_model.safetensors") << "weights";
  std::ofstream(dir + "/README.md") << "not part of the identity";
  // The definition in adapter_service.proto, spelled out.
  const std::string expected = Sha(absl::StrCat("adapter_config.json ", Sha("{}"), "\n",
                                                "adapter_model.safetensors ", Sha("weights"), "\n"));
  ASSERT_OK_AND_ASSIGN(std::string from_dir, AdapterChecksumOfDir(dir));
  EXPECT_EQ(from_dir, expected);
  ASSERT_OK_AND_ASSIGN(std::string from_digests,
                       AdapterChecksum({{"adapter_model.safetensors", Sha("weights")},
                                        {"adapter_config.json", Sha("{}")},
                                        {"README.md", Sha("x")}}));
  EXPECT_EQ(from_digests, expected);
  EXPECT_THAT(AdapterChecksum({{"adapter_model.safetensors", Sha("weights")}}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("adapter_config.json")));
}

TEST(FileTransferTest, UploadWriterRefusesBadChunks) {
  const std::string dir = MakeTempDir();
  {
    UploadWriter w(dir, 4);
    EXPECT_THAT(w.Add(Chunk("a", 0, "hello", false)), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("announced")));
  }
  for (const char* bad : {"../a", "/abs", ".hidden", "a//b", "a/b/c/d/e", "sp ace", ""}) {
    UploadWriter w(dir, 100);
    EXPECT_THAT(w.Add(Chunk(bad, 0, "x", true, Sha("x"))), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  UploadWriter w(dir, 100);
  ASSERT_OK(w.Add(Chunk("b", 0, "x", false)));
  EXPECT_THAT(w.Add(Chunk("c", 0, "y", true, Sha("y"))), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("before")));
  EXPECT_THAT(w.Finish(0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eof")));
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

TEST(HttpEndpointTest, ServesHandlersAnd404) {
  HttpEndpoint http;
  http.Handle("/metrics", [] { return HttpEndpoint::Response{200, "text/plain", "up 1\n"}; });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  ASSERT_GT(http.port(), 0);
  ASSERT_OK_AND_ASSIGN(std::string body, testing::HttpGet(http.port(), "/metrics"));
  EXPECT_EQ(body, "up 1\n");
  EXPECT_THAT(testing::HttpGet(http.port(), "/other"), StatusIs(absl::StatusCode::kInternal, HasSubstr("404")));
  HttpEndpoint second;
  EXPECT_THAT(second.Start(absl::StrCat("127.0.0.1:", http.port())), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(second.Start("nonsense"), StatusIs(absl::StatusCode::kInvalidArgument));
  http.Stop();
  EXPECT_FALSE(testing::HttpGet(http.port(), "/metrics").ok());
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
