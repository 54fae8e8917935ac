// The FileChunk transfer helpers shared by the server and the client library: chunking with
// SHA-256s, verified reassembly (files move into place only once verified), the path rules and the
// adapter checksum.
#include "transfer/file_transfer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::transfer {
namespace {

namespace fs = std::filesystem;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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

TEST(FileTransferTest, DirectoryWriterThenDirectoryReaderRoundTrip) {
  const std::string in = MakeTempDir();
  DirectoryWriter writer(in, 100);
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

TEST(FileTransferTest, DirectoryWriterRefusesBadChunks) {
  const std::string dir = MakeTempDir();
  {
    DirectoryWriter w(dir, 4);
    EXPECT_THAT(w.Add(Chunk("a", 0, "hello", false)), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("announced")));
  }
  for (const char* bad : {"../a", "/abs", ".hidden", "a//b", "a/b/c/d/e", "sp ace", ""}) {
    DirectoryWriter w(dir, 100);
    EXPECT_THAT(w.Add(Chunk(bad, 0, "x", true, Sha("x"))), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  DirectoryWriter w(dir, 100);
  ASSERT_OK(w.Add(Chunk("b", 0, "x", false)));
  EXPECT_THAT(w.Add(Chunk("c", 0, "y", true, Sha("y"))), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("before")));
  EXPECT_THAT(w.Finish(0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eof")));
}

TEST(FileTransferTest, DirectoryWriterReplacesAFileOnlyOnceVerifiedAndLeavesNoPartialFiles) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/a.json") << "old";
  {
    DirectoryWriter w(dir, 100);
    ASSERT_OK(w.Add(Chunk("a.json", 0, "ne", false)));
    EXPECT_EQ(ReadAll(dir + "/a.json"), "old");  // not replaced while unverified
    EXPECT_THAT(w.Add(Chunk("a.json", 2, "w", true, Sha("bad"))),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("SHA-256")));
  }
  EXPECT_EQ(ReadAll(dir + "/a.json"), "old");  // a refused file changes nothing
  {
    DirectoryWriter w(dir, 100);
    ASSERT_OK(w.Add(Chunk("a.json", 0, "new", true, Sha("new"))));
    // "a.json.part" is a legal file of its own: the temporary name cannot clash with it.
    ASSERT_OK(w.Add(Chunk("a.json.part", 0, "p", false)));
  }  // abandoned mid-file
  EXPECT_EQ(ReadAll(dir + "/a.json"), "new");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"a.json"});  // no partial or temporary file left
}

}  // namespace
}  // namespace loraserve::transfer
