// AdapterService over loopback with the real client library: every RPC's success and error paths,
// adapter-root confinement, uploads (checksums, size cap, clean-up), save/export round trips, and
// delete / merge racing with inference. Truth: the PEFT fixtures under ../shared/fixtures/peft.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/io/safetensors.h"
#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;
namespace pb = ::loraserve::v1;

using ::loraserve::testing::AllcloseExcess;
using ::loraserve::testing::FixturePrompts;
using ::loraserve::testing::FixtureTensor;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::PeftRoot;
using ::loraserve::testing::StatusIs;
using ::loraserve::testing::TestServer;
using ::testing::AllOf;
using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr double kLogitsAtol = 1e-4;

class AdapterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    upload_dir_ = MakeTempDir();
    auto options = TestServer::DefaultOptions();
    options.server.upload_dir = upload_dir_;
    options.server.max_upload_bytes = 100 * 1024;  // qv_r4 fits, all_linear_r8_rslora does not
    ModifyOptions(&options);
    auto t = TestServer::Start(options);
    ASSERT_TRUE(t.ok()) << t.status();
    env_ = *std::move(t);
  }
  virtual void ModifyOptions(testing::TestServerOptions* /*options*/) {}
  Client& client() { return env_->client(); }

  // Full logits of fixture prompt `i` of `peft_case` with `adapter`.
  std::vector<float> Logits(const std::string& adapter, const std::string& peft_case, size_t i) {
    ScoreRequest s;
    s.adapter = adapter;
    s.token_ids = FixturePrompts(peft_case).at(i);
    s.full_logits = true;
    auto r = client().Score(s);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->logits : std::vector<float>();
  }

  // Entries of the upload directory (uploads in progress or loaded).
  std::vector<std::string> UploadDirEntries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(upload_dir_)) out.push_back(e.path().filename());
    return out;
  }

  // Scratch and upload directories are removed on the server's pool, just after the reply.
  bool EventuallyNoUploads() const {
    const absl::Time end = absl::Now() + absl::Seconds(5);
    while (!UploadDirEntries().empty() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(2));
    return UploadDirEntries().empty();
  }

  std::string upload_dir_;
  std::unique_ptr<TestServer> env_;
};

// SHA-256 of `data` as 64 lowercase hex digits (OpenSSL directly: independent of the server's code).
std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += absl::StrFormat("%02x", digest[i]);
  return hex;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The proto's definition of Adapter.checksum over the fixture directory `dir`.
std::string ExpectedChecksum(const std::string& dir) {
  std::string lines;
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
    const std::string content = ReadFile(dir + "/" + file);
    EXPECT_FALSE(content.empty()) << dir << "/" << file;
    absl::StrAppend(&lines, file, " ", Sha256Hex(content), "\n");
  }
  return Sha256Hex(lines);
}

// The messages of errors must not reveal where the server keeps its files.
MATCHER(HidesServerPaths, "does not mention server paths") {
  const std::string m(arg.message());
  return m.find(PeftRoot()) == std::string::npos && m.find(testing::SharedDir()) == std::string::npos &&
         m.find("/work/") == std::string::npos && m.find("/tmp/") == std::string::npos;
}

TEST_F(AdapterServiceTest, LoadGetAndListDescribeTheAdapters) {
  CallInfo info;
  CallOptions call;
  call.info = &info;
  call.request_id = "load-qv";
  ASSERT_OK_AND_ASSIGN(AdapterInfo qv, client().LoadAdapter("qv_r4", "qv_r4/adapter", call));
  EXPECT_EQ(info.request_id, "load-qv");
  EXPECT_EQ(qv.name, "qv_r4");
  EXPECT_EQ(qv.state, AdapterState::kReady);
  EXPECT_EQ(qv.residency, Residency::kResident);
  EXPECT_EQ(qv.source, AdapterSource::kAdapterRoot);
  EXPECT_EQ(qv.path, "qv_r4/adapter");
  EXPECT_EQ(qv.base_model_match, BaseModelMatch::kMatch);
  EXPECT_EQ(qv.base_model_name_or_path, "models/stories260K");
  EXPECT_EQ(qv.max_rank, 4);
  EXPECT_EQ(qv.target_modules.size(), 10u);
  EXPECT_THAT(qv.ranks, AllOf(::testing::SizeIs(10), Each(4)));
  // 5 layers x (q: A 4x64 + B 64x4, v: A 4x64 + B 32x4) float32.
  EXPECT_EQ(qv.bytes, 5 * (256 + 256 + 256 + 128) * 4);
  EXPECT_FALSE(qv.dora);

  ASSERT_OK(client().LoadAdapter("dora", "dora_qv/adapter").status());
  ASSERT_OK_AND_ASSIGN(AdapterInfo got, client().GetAdapter("dora"));
  EXPECT_TRUE(got.dora);
  ASSERT_OK_AND_ASSIGN(std::vector<AdapterInfo> all, client().ListAdapters());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "dora");  // sorted by name
  EXPECT_EQ(all[1].name, "qv_r4");
  // Lifecycle events carry the request id.
  EXPECT_EQ(env_->logs().Matching({"event=adapter_loaded", "rid=load-qv", "name=qv_r4"}).size(), 1u);
  EXPECT_EQ(env_->logs().Matching({"access", "rid=load-qv", "rpc=LoadAdapter", "code=OK"}).size(), 1u);
}

TEST_F(AdapterServiceTest, LoadErrors) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  EXPECT_THAT(client().LoadAdapter("qv_r4", "qv_r4_b/adapter"), StatusIs(absl::StatusCode::kAlreadyExists));
  auto missing = client().LoadAdapter("x", "no_such_case/adapter");
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound, HasSubstr("no_such_case/adapter")));
  EXPECT_THAT(missing.status(), HidesServerPaths());
  EXPECT_THAT(client().LoadAdapter("x", "../peft/qv_r4/adapter"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("escapes")));
  EXPECT_THAT(client().LoadAdapter("x", "qv_r4/../../models"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("escapes")));
  EXPECT_THAT(client().LoadAdapter("x", PeftRoot() + "/qv_r4/adapter"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("relative")));
  EXPECT_THAT(client().LoadAdapter("bad name", "qv_r4/adapter"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name")));
  EXPECT_THAT(client().LoadAdapter("x", ""), StatusIs(absl::StatusCode::kInvalidArgument));
  // A directory without adapter files: the loader's error, with the server path hidden.
  auto not_adapter = client().LoadAdapter("x", "qv_r4");
  EXPECT_FALSE(not_adapter.ok());
  EXPECT_THAT(not_adapter.status(), HidesServerPaths());
  EXPECT_THAT(not_adapter.status().message(), HasSubstr("adapter_config.json"));
  ASSERT_OK_AND_ASSIGN(std::vector<AdapterInfo> all, client().ListAdapters());
  EXPECT_EQ(all.size(), 1u);
}

TEST_F(AdapterServiceTest, GetDeleteMergeUnmergeLifecycle) {
  EXPECT_THAT(client().GetAdapter("qv_r4"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client().DeleteAdapter("qv_r4"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client().MergeAdapter("qv_r4"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client().UnmergeAdapter("qv_r4"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  EXPECT_THAT(client().UnmergeAdapter("qv_r4"), StatusIs(absl::StatusCode::kFailedPrecondition));

  ASSERT_OK_AND_ASSIGN(MergeResult merged, client().MergeAdapter("qv_r4"));
  EXPECT_FALSE(merged.already_merged);
  EXPECT_EQ(merged.adapter.state, AdapterState::kMerged);
  ASSERT_OK_AND_ASSIGN(MergeResult again, client().MergeAdapter("qv_r4"));
  EXPECT_TRUE(again.already_merged);
  EXPECT_THAT(client().DeleteAdapter("qv_r4"), StatusIs(absl::StatusCode::kFailedPrecondition));

  // Merged: the adapter's requests match PEFT's merged logits, the base's are unchanged.
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LE(AllcloseExcess(Logits("qv_r4", "qv_r4", i), FixtureTensor("qv_r4", absl::StrCat("logits.merged.p", i))),
              kLogitsAtol);
    EXPECT_LE(AllcloseExcess(Logits("", "qv_r4", i), FixtureTensor("qv_r4", absl::StrCat("logits.base.p", i))),
              kLogitsAtol);
  }
  ASSERT_OK_AND_ASSIGN(AdapterInfo unmerged, client().UnmergeAdapter("qv_r4"));
  EXPECT_EQ(unmerged.state, AdapterState::kReady);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LE(AllcloseExcess(Logits("", "qv_r4", i), FixtureTensor("qv_r4", absl::StrCat("logits.after_unmerge.p", i))),
              kLogitsAtol);
    EXPECT_LE(AllcloseExcess(Logits("qv_r4", "qv_r4", i),
                             FixtureTensor("qv_r4", absl::StrCat("logits.after_unmerge_active.p", i))),
              kLogitsAtol);
  }
  ASSERT_OK(client().DeleteAdapter("qv_r4"));
  EXPECT_THAT(client().GetAdapter("qv_r4"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client().Generate({"qv_r4", "", {1, 2}, {}}), StatusIs(absl::StatusCode::kNotFound));

  // PEFT cannot merge lora_bias on bias-free layers; loraserve materialises the bias
  // (spec/lora-semantics.md §7), so the merged adapter answers exactly as the unmerged one.
  ASSERT_OK(client().LoadAdapter("bias", "lora_bias/adapter").status());
  ASSERT_OK_AND_ASSIGN(MergeResult bias, client().MergeAdapter("bias"));
  EXPECT_EQ(bias.adapter.state, AdapterState::kMerged);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LE(AllcloseExcess(Logits("bias", "lora_bias", i), FixtureTensor("lora_bias", absl::StrCat("logits.adapter.p", i))),
              kLogitsAtol);
  }
}

TEST_F(AdapterServiceTest, UnloadAllRestoresTheCheckpoint) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(client().LoadAdapter("rs", "all_linear_r8_rslora/adapter").status());
  ASSERT_OK(client().MergeAdapter("rs").status());
  ASSERT_OK_AND_ASSIGN(int deleted, client().UnloadAll());
  EXPECT_EQ(deleted, 2);
  ASSERT_OK_AND_ASSIGN(std::vector<AdapterInfo> all, client().ListAdapters());
  EXPECT_TRUE(all.empty());
  EXPECT_LE(AllcloseExcess(Logits("", "qv_r4", 0), FixtureTensor("qv_r4", "logits.base.p0")), kLogitsAtol);
  ASSERT_OK_AND_ASSIGN(deleted, client().UnloadAll());
  EXPECT_EQ(deleted, 0);
}

TEST_F(AdapterServiceTest, CombineAdaptersMatchesPeftAddWeightedAdapter) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter").status());
  struct Case {
    std::string fixture;
    std::string type;
    std::vector<double> weights;
    double density;
  };
  for (const Case& c : {Case{"linear_w07_03", "linear", {0.7, 0.3}, 1.0},
                        Case{"cat_w1_m1", "cat", {1.0, -1.0}, 1.0},
                        Case{"svd_w07_03", "svd", {0.7, 0.3}, 1.0},
                        Case{"ties_w07_03_d05", "ties", {0.7, 0.3}, 0.5}}) {
    CombineRequest req;
    req.name = c.fixture;
    req.sources = {{"qv_r4", c.weights[0]}, {"qv_r4_b", c.weights[1]}};
    req.combination_type = c.type;
    req.density = c.density;
    ASSERT_OK_AND_ASSIGN(AdapterInfo info, client().CombineAdapters(req));
    EXPECT_EQ(info.source, AdapterSource::kCombined);
    EXPECT_EQ(info.base_model_name_or_path, "models/stories260K");  // inherited, as in PEFT
    const std::string fixture = "multi/weighted/" + c.fixture;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_LE(AllcloseExcess(Logits(c.fixture, fixture, i), FixtureTensor(fixture, absl::StrCat("logits.p", i))),
                kLogitsAtol)
          << c.fixture << " prompt " << i;
    }
  }
  CombineRequest req;
  req.name = "linear_w07_03";
  req.sources = {{"qv_r4", 0.5}, {"qv_r4_b", 0.5}};
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kAlreadyExists));
  req.name = "new";
  req.sources = {{"qv_r4", 0.5}, {"missing", 0.5}};
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kNotFound));
  req.sources = {{"qv_r4", 0.5}, {"qv_r4_b", 0.5}};
  req.density = 0;
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("density")));
  req.density = 1;
  req.sources = {};
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sources")));
  req.sources = {{"qv_r4", std::nan("")}};
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("finite")));
  req.sources = {{"qv_r4", 1}};
  req.combination_type = "average";
  EXPECT_THAT(client().CombineAdapters(req), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(AdapterServiceTest, SaveThenUploadRoundTripsAndDeleteRemovesTheUpload) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  const std::string out = MakeTempDir() + "/saved";
  ASSERT_OK_AND_ASSIGN(std::vector<TransferredFile> files, client().SaveAdapter("qv_r4", out));
  std::vector<std::string> names;
  for (const auto& f : files) {
    names.push_back(f.path);
    EXPECT_EQ(f.sha256.size(), 64u);
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(fs::path(out) / f.path)), f.size);
  }
  EXPECT_THAT(names, ElementsAre("adapter_config.json", "adapter_model.safetensors"));
  EXPECT_TRUE(EventuallyNoUploads()) << "the save's scratch directory was not removed";

  ASSERT_OK_AND_ASSIGN(AdapterInfo copy, client().UploadAdapter("qv_copy", out));
  EXPECT_EQ(copy.source, AdapterSource::kUpload);
  EXPECT_TRUE(copy.path.empty());
  EXPECT_EQ(copy.ranks, std::vector<int64_t>(10, 4));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LE(AllcloseExcess(Logits("qv_copy", "qv_r4", i), FixtureTensor("qv_r4", absl::StrCat("logits.adapter.p", i))),
              kLogitsAtol);
  }
  EXPECT_EQ(UploadDirEntries().size(), 1u);
  ASSERT_OK_AND_ASSIGN(AdapterInfo again, client().UploadAdapter("qv_copy", out));
  EXPECT_TRUE(again.already_loaded);
  EXPECT_EQ(UploadDirEntries().size(), 1u) << "the second, identical upload was kept";
  ASSERT_OK(client().DeleteAdapter("qv_copy"));
  EXPECT_TRUE(env_->logs().Matching({"event=adapter_deleted", "name=qv_copy"}).size() == 1);
  // The upload's files go with the adapter.
  EXPECT_TRUE(EventuallyNoUploads());
  EXPECT_THAT(client().SaveAdapter("missing", out), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(AdapterServiceTest, ChecksumIsTheSameForLoadAndUploadOfTheSameFiles) {
  const std::string dir = PeftRoot() + "/qv_r4/adapter";
  const std::string expected = ExpectedChecksum(dir);
  ASSERT_EQ(expected.size(), 64u);
  ASSERT_OK_AND_ASSIGN(AdapterInfo loaded, client().LoadAdapter("qv_r4", "qv_r4/adapter"));
  EXPECT_EQ(loaded.checksum, expected);
  EXPECT_FALSE(loaded.already_loaded);
  ASSERT_OK_AND_ASSIGN(AdapterInfo uploaded, client().UploadAdapter("qv_up", dir));
  EXPECT_EQ(uploaded.checksum, expected);
  EXPECT_FALSE(uploaded.already_loaded);
  ASSERT_OK_AND_ASSIGN(AdapterInfo other, client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter"));
  EXPECT_EQ(other.checksum, ExpectedChecksum(PeftRoot() + "/qv_r4_b/adapter"));
  EXPECT_NE(other.checksum, expected);

  // Every description carries it; combined adapters have none.
  ASSERT_OK_AND_ASSIGN(AdapterInfo got, client().GetAdapter("qv_up"));
  EXPECT_EQ(got.checksum, expected);
  CombineRequest combine;
  combine.name = "mix";
  combine.sources = {{"qv_r4", 0.5}, {"qv_r4_b", 0.5}};
  combine.combination_type = "linear";
  ASSERT_OK_AND_ASSIGN(AdapterInfo mix, client().CombineAdapters(combine));
  EXPECT_EQ(mix.checksum, "");
  ASSERT_OK_AND_ASSIGN(MergeResult merged, client().MergeAdapter("qv_r4"));
  EXPECT_EQ(merged.adapter.checksum, expected);
  ASSERT_OK_AND_ASSIGN(std::vector<AdapterInfo> all, client().ListAdapters());
  std::map<std::string, std::string> checksums;
  for (const auto& a : all) checksums[a.name] = a.checksum;
  EXPECT_EQ(checksums, (std::map<std::string, std::string>{
                           {"mix", ""}, {"qv_r4", expected}, {"qv_r4_b", other.checksum}, {"qv_up", expected}}));
}

TEST_F(AdapterServiceTest, LoadingTheSameContentAgainIsIdempotent) {
  ASSERT_OK_AND_ASSIGN(AdapterInfo first, client().LoadAdapter("qv_r4", "qv_r4/adapter"));
  ASSERT_OK(client().Tokenize("x", true).status());
  ScoreRequest score;
  score.adapter = "qv_r4";
  score.token_ids = FixturePrompts("qv_r4").at(0);
  ASSERT_OK(client().Score(score).status());
  ASSERT_OK_AND_ASSIGN(AdapterInfo second, client().LoadAdapter("qv_r4", "qv_r4/adapter"));
  EXPECT_TRUE(second.already_loaded);
  EXPECT_EQ(second.checksum, first.checksum);
  EXPECT_EQ(second.uses, 1) << "the existing adapter is answered, not a reloaded one";
  EXPECT_EQ(env_->logs().Matching({"event=adapter_loaded", "name=qv_r4"}).size(), 1u);
  // The same content under the same name, from the other source, is the same adapter too.
  ASSERT_OK_AND_ASSIGN(AdapterInfo uploaded, client().UploadAdapter("qv_r4", PeftRoot() + "/qv_r4/adapter"));
  EXPECT_TRUE(uploaded.already_loaded);
  EXPECT_EQ(uploaded.source, AdapterSource::kAdapterRoot);
  EXPECT_TRUE(EventuallyNoUploads()) << "the redundant upload's files were kept";

  // Other content under a taken name stays an error, whichever way it comes.
  EXPECT_THAT(client().LoadAdapter("qv_r4", "qv_r4_b/adapter"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("different checksum")));
  EXPECT_THAT(client().UploadAdapter("qv_r4", PeftRoot() + "/qv_r4_b/adapter"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("different checksum")));
  EXPECT_TRUE(EventuallyNoUploads());
  ASSERT_OK_AND_ASSIGN(AdapterInfo still, client().GetAdapter("qv_r4"));
  EXPECT_EQ(still.checksum, first.checksum);
  // A combined adapter has no checksum to match.
  CombineRequest combine;
  combine.name = "mix";
  combine.sources = {{"qv_r4", 1.0}};
  combine.combination_type = "linear";
  ASSERT_OK(client().CombineAdapters(combine).status());
  EXPECT_THAT(client().LoadAdapter("mix", "qv_r4/adapter"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("combined")));
  // Deleted, the name loads afresh.
  ASSERT_OK(client().DeleteAdapter("qv_r4"));
  ASSERT_OK_AND_ASSIGN(AdapterInfo reloaded, client().LoadAdapter("qv_r4", "qv_r4_b/adapter"));
  EXPECT_FALSE(reloaded.already_loaded);
  EXPECT_NE(reloaded.checksum, first.checksum);
}

TEST_F(AdapterServiceTest, SaveAndExportAnnounceTheirTotalSizeFirst) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  auto check = [](const std::vector<TransferredFile>& files, const std::vector<TransferProgress>& seen) {
    int64_t sum = 0;
    for (const auto& f : files) sum += f.size;
    ASSERT_FALSE(seen.empty());
    // Without the server's announcement the first callback could only know its own chunk.
    EXPECT_LT(seen.front().bytes_done, sum);
    EXPECT_EQ(seen.front().total_bytes, sum);
    EXPECT_EQ(seen.back().bytes_done, sum);
  };
  std::vector<TransferProgress> seen;
  const ProgressCallback record = [&seen](const TransferProgress& p) { seen.push_back(p); };
  ASSERT_OK_AND_ASSIGN(std::vector<TransferredFile> saved,
                       client().SaveAdapter("qv_r4", MakeTempDir(), {}, record));
  ASSERT_EQ(saved.size(), 2u);
  check(saved, seen);
  seen.clear();
  ASSERT_OK_AND_ASSIGN(std::vector<TransferredFile> exported,
                       client().ExportMergedModel({"qv_r4"}, MakeTempDir(), {}, record));
  ASSERT_GE(exported.size(), 3u);
  check(exported, seen);
}

// Raw-stub uploads for what the client library never sends.
class RawUploadTest : public AdapterServiceTest {
 protected:
  absl::Status Upload(const std::vector<pb::UploadAdapterRequest>& messages) {
    auto channel = grpc::CreateChannel(env_->address(), grpc::InsecureChannelCredentials());
    auto stub = pb::AdapterService::NewStub(channel);
    grpc::ClientContext ctx;
    pb::UploadAdapterResponse resp;
    auto writer = stub->UploadAdapter(&ctx, &resp);
    for (const auto& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }

  static pb::UploadAdapterRequest First(const std::string& name, int64_t total) {
    pb::UploadAdapterRequest r;
    r.set_name(name);
    r.set_total_bytes(total);
    return r;
  }
  static pb::UploadAdapterRequest Chunk(const std::string& path, int64_t offset, const std::string& data,
                                        bool eof, const std::string& sha256 = "") {
    pb::UploadAdapterRequest r;
    pb::FileChunk* c = r.mutable_chunk();
    c->set_path(path);
    c->set_offset(offset);
    c->set_data(data);
    c->set_eof(eof);
    if (eof) {
      c->set_size(offset + static_cast<int64_t>(data.size()));
      c->set_sha256(sha256);
    }
    return r;
  }
};

TEST_F(RawUploadTest, UploadErrorsLeaveNothingBehind) {
  // sha256("hello") in hex.
  const std::string hello_sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  EXPECT_THAT(Upload({First("u", 5), Chunk("adapter_config.json", 0, "hello", true, std::string(64, '0'))}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("SHA-256")));
  EXPECT_THAT(Upload({First("u", 5), Chunk("../evil", 0, "hello", true, hello_sha)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("path")));
  EXPECT_THAT(Upload({First("u", 5), Chunk("a.json", 0, "hel", false), Chunk("a.json", 4, "lo", true)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("offset")));
  EXPECT_THAT(Upload({First("u", 5), Chunk("a.json", 0, "hello", false)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eof")));
  EXPECT_THAT(Upload({First("u", 6), Chunk("a.json", 0, "hello", true, hello_sha)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("announced")));
  EXPECT_THAT(Upload({First("u", 0)}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("total_bytes")));
  EXPECT_THAT(Upload({First("u", 200 * 1024)}), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Upload({First("u", 10), Chunk("a.json", 0, std::string(1000, 'x'), false)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("announced")));
  // Well-formed files that are not an adapter: the loader refuses them.
  EXPECT_THAT(Upload({First("u", 5), Chunk("adapter_config.json", 0, "hello", true, hello_sha)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(EventuallyNoUploads());
  ASSERT_OK_AND_ASSIGN(std::vector<AdapterInfo> all, client().ListAdapters());
  EXPECT_TRUE(all.empty());
  // Through the client library: a directory over the size cap.
  EXPECT_THAT(client().UploadAdapter("big", PeftRoot() + "/all_linear_r8_rslora/adapter"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(EventuallyNoUploads());
}

TEST_F(AdapterServiceTest, ExportMergedModelWritesPeftsMergedWeights) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  const std::string out = MakeTempDir();
  ASSERT_OK_AND_ASSIGN(std::vector<TransferredFile> files, client().ExportMergedModel({"qv_r4"}, out));
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(f.path);
  EXPECT_THAT(names, ::testing::IsSupersetOf({"config.json", "model.safetensors", "tokenizer.json"}));
  ASSERT_OK_AND_ASSIGN(auto model, core::SafetensorsFile::Open(out + "/model.safetensors"));
  for (const std::string module : {"model.layers.0.self_attn.q_proj.weight", "model.layers.4.self_attn.v_proj.weight"}) {
    const core::SafetensorsEntry* e = model->Find(module);
    ASSERT_NE(e, nullptr) << module;
    absl::Span<const uint8_t> bytes = model->Bytes(*e);
    std::vector<float> got(bytes.size() / 4);
    std::memcpy(got.data(), bytes.data(), bytes.size());
    EXPECT_LE(AllcloseExcess(got, FixtureTensor("qv_r4", "weight.merged." + module), 1e-5), 1e-5) << module;
  }
  EXPECT_THAT(client().ExportMergedModel({"missing"}, MakeTempDir()), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client().ExportMergedModel({"bad name"}, MakeTempDir()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(EventuallyNoUploads());
}

TEST_F(AdapterServiceTest, DeleteWhileARequestUsesTheAdapter) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  GenerateRequest r;
  r.adapter = "qv_r4";
  r.token_ids = FixturePrompts("qv_r4").at(0);
  r.sampling.temperature = 0;
  r.sampling.max_new_tokens = 16;
  r.sampling.ignore_eos = true;
  ASSERT_OK_AND_ASSIGN(GenerateResult reference, client().Generate(r));

  env_->engine().PauseAfterNextStep();
  auto running = std::async(std::launch::async, [&] { return client().Generate(r); });
  ASSERT_TRUE(env_->engine().WaitUntilPaused());
  auto other = env_->NewClient();
  ASSERT_OK(other->DeleteAdapter("qv_r4"));
  EXPECT_THAT(other->Generate(r), StatusIs(absl::StatusCode::kNotFound));
  env_->engine().Resume();
  ASSERT_OK_AND_ASSIGN(GenerateResult finished, running.get());
  EXPECT_EQ(finished.text, reference.text);
  EXPECT_EQ(finished.completion_tokens, 16);
}

TEST_F(AdapterServiceTest, MergeAndUnmergeRacingWithInferenceNeverChangeAnswers) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter").status());
  const std::vector<std::string> adapters = {"", "qv_r4", "qv_r4_b"};
  const auto prompts = FixturePrompts("qv_r4");
  std::vector<std::vector<float>> expected;
  for (const auto& a : adapters) {
    expected.push_back(FixtureTensor(a.empty() ? "qv_r4" : a, a.empty() ? "logits.base.p1" : "logits.adapter.p1"));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> merges{0};
  auto merger = std::async(std::launch::async, [&] {
    auto c = env_->NewClient();
    absl::Status s;
    while (!stop && s.ok()) {
      s = c->MergeAdapter("qv_r4").status();
      if (s.ok()) s = c->UnmergeAdapter("qv_r4").status();
      ++merges;
    }
    return s;
  });
  std::vector<std::future<int>> scorers;
  for (size_t k = 0; k < adapters.size(); ++k) {
    scorers.push_back(std::async(std::launch::async, [&, k] {
      auto c = env_->NewClient();
      int n = 0;
      while (merges < 20 && n < 500) {
        ScoreRequest s;
        s.adapter = adapters[k];
        s.token_ids = prompts[1];
        s.full_logits = true;
        auto r = c->Score(s);
        EXPECT_TRUE(r.ok()) << r.status();
        if (!r.ok()) break;
        EXPECT_LE(AllcloseExcess(r->logits, expected[k]), kLogitsAtol) << "adapter '" << adapters[k] << "'";
        ++n;
      }
      return n;
    }));
  }
  for (auto& s : scorers) EXPECT_GT(s.get(), 0);
  stop = true;
  EXPECT_OK(merger.get());
  EXPECT_GE(merges.load(), 20);
}

class RootedServerTest : public AdapterServiceTest {
 protected:
  void ModifyOptions(testing::TestServerOptions* o) override {
    root_ = MakeTempDir();
    // Inside the root: a copy of qv_r4. A symbolic link pointing outside: refused.
    fs::create_directories(root_ + "/inside");
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) {
      fs::copy_file(PeftRoot() + "/qv_r4/adapter/" + f, root_ + "/inside/" + f);
    }
    fs::create_directory_symlink(PeftRoot() + "/qv_r4_b/adapter", root_ + "/escape");
    o->server.adapter_root = root_;
    o->engine.adapters.load.max_rank = 4;
  }
  std::string root_;
};

TEST_F(RootedServerTest, SymlinksOutOfTheRootAndRanksAboveTheLimitAreRefused) {
  ASSERT_OK_AND_ASSIGN(AdapterInfo inside, client().LoadAdapter("inside", "inside"));
  EXPECT_EQ(inside.path, "inside");
  auto escape = client().LoadAdapter("escape", "escape");
  EXPECT_THAT(escape, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("escapes")));
  EXPECT_THAT(escape.status(), HidesServerPaths());
  // Uploads still work on this server, and --max_rank applies to them.
  auto r8 = client().UploadAdapter("r8", PeftRoot() + "/patterns/adapter");  // has a rank-8 module
  EXPECT_THAT(r8, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r8.status(), HidesServerPaths());
}

class SmallAdapterBudgetTest : public AdapterServiceTest {
  // One qv adapter (17,920 bytes) fits, two do not.
  void ModifyOptions(testing::TestServerOptions* o) override { o->engine.adapters.budget_bytes = 20000; }
};

TEST_F(SmallAdapterBudgetTest, EvictedAdaptersAreListedAndReloadTransparently) {
  ASSERT_OK(client().LoadAdapter("qv_r4", "qv_r4/adapter").status());
  ASSERT_OK(client().LoadAdapter("qv_r4_b", "qv_r4_b/adapter").status());
  ASSERT_OK_AND_ASSIGN(AdapterInfo first, client().GetAdapter("qv_r4"));
  EXPECT_EQ(first.residency, Residency::kEvicted);
  EXPECT_EQ(first.bytes, 0);
  ASSERT_OK_AND_ASSIGN(auto evicted, env_->Metric("loraserve_adapters", {{"state", "ready"}, {"residency", "evicted"}}));
  EXPECT_EQ(evicted, 1.0);
  ASSERT_OK_AND_ASSIGN(auto evictions, env_->Metric("loraserve_adapter_evictions_total"));
  EXPECT_EQ(evictions, 1.0);
  // Using the evicted adapter reloads it (and evicts the other); answers are unchanged.
  EXPECT_LE(AllcloseExcess(Logits("qv_r4", "qv_r4", 0), FixtureTensor("qv_r4", "logits.adapter.p0")), kLogitsAtol);
  ASSERT_OK_AND_ASSIGN(first, client().GetAdapter("qv_r4"));
  EXPECT_EQ(first.residency, Residency::kResident);
  ASSERT_OK_AND_ASSIGN(AdapterInfo second, client().GetAdapter("qv_r4_b"));
  EXPECT_EQ(second.residency, Residency::kEvicted);
}

TEST_F(SmallAdapterBudgetTest, RegisteredAdaptersLoadOnFirstUseAndCountInMetrics) {
  ASSERT_OK_AND_ASSIGN(AdapterInfo reg, client().RegisterAdapter("qv_r4", "qv_r4/adapter"));
  EXPECT_EQ(reg.residency, Residency::kNotLoaded);
  EXPECT_EQ(reg.bytes, 0);
  EXPECT_FALSE(reg.checksum.empty());
  ASSERT_OK_AND_ASSIGN(auto not_loaded, env_->Metric("loraserve_adapters", {{"state", "ready"}, {"residency", "not_loaded"}}));
  EXPECT_EQ(not_loaded, 1.0);
  // Registering the same files again is idempotent, as for loads.
  ASSERT_OK_AND_ASSIGN(AdapterInfo again, client().RegisterAdapter("qv_r4", "qv_r4/adapter"));
  EXPECT_TRUE(again.already_loaded);
  EXPECT_LE(AllcloseExcess(Logits("qv_r4", "qv_r4", 0), FixtureTensor("qv_r4", "logits.adapter.p0")), kLogitsAtol);
  ASSERT_OK_AND_ASSIGN(AdapterInfo used, client().GetAdapter("qv_r4"));
  EXPECT_EQ(used.residency, Residency::kResident);
  EXPECT_GT(used.bytes, 0);
  ASSERT_OK_AND_ASSIGN(auto loads, env_->Metric("loraserve_adapter_loads_total"));
  EXPECT_EQ(loads, 1.0);
  ASSERT_OK_AND_ASSIGN(auto misses, env_->Metric("loraserve_adapter_misses_total"));
  EXPECT_EQ(misses, 1.0);
  ASSERT_OK_AND_ASSIGN(auto seconds, env_->Metric("loraserve_adapter_load_seconds_total"));
  EXPECT_GT(seconds, 0.0);
  // Counted down just after the waiting requests were handed the adapter: it reaches 0.
  std::optional<double> waiting;
  for (int i = 0; i < 1000 && waiting != 0.0; ++i) {
    ASSERT_OK_AND_ASSIGN(waiting, env_->Metric("loraserve_adapter_load_waiting"));
    if (waiting != 0.0) absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(waiting, 0.0);
}

class NoRootServerTest : public AdapterServiceTest {
  void ModifyOptions(testing::TestServerOptions* o) override { o->server.adapter_root.clear(); }
};

TEST_F(NoRootServerTest, LoadAdapterNeedsAnAdapterRoot) {
  EXPECT_THAT(client().LoadAdapter("qv_r4", "qv_r4/adapter"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("UploadAdapter")));
  ASSERT_OK(client().UploadAdapter("qv_r4", PeftRoot() + "/qv_r4/adapter").status());
  EXPECT_LE(AllcloseExcess(Logits("qv_r4", "qv_r4", 0), FixtureTensor("qv_r4", "logits.adapter.p0")), kLogitsAtol);
}

}  // namespace
}  // namespace loraserve
