// --state_dir: the record store (atomic records, corrupt ones quarantined, leftovers removed) and a
// server restart with tenants that restores every tenant's adapters in its namespace, merged
// state included, with the same Score logits bit for bit. The SIGKILL crash test is
// tests/e2e/crash_test.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/state_store.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;
using ::loraserve::server::AdapterRecord;
using ::loraserve::server::StateStore;
using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::PeftRoot;
using ::loraserve::testing::ScoreLogits;
using ::loraserve::testing::TestServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void Spit(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

AdapterRecord RootRecord(const std::string& name, const std::string& path) {
  AdapterRecord r;
  r.name = name;
  r.origin = "adapter_root";
  r.path = path;
  r.root_path = path;
  r.checksum = "abc";
  return r;
}

TEST(StateStoreTest, RecordsRoundTripAndNamespacedNamesGetTheirOwnFile) {
  const std::string dir = MakeTempDir() + "/state";
  ASSERT_OK_AND_ASSIGN(auto store, StateStore::Open(dir));
  for (const char* sub : {"adapters", "files", "quarantine"}) EXPECT_TRUE(fs::is_directory(fs::path(dir) / sub));
  AdapterRecord up;
  up.name = "acme/u";
  up.origin = "upload";
  up.files = "upload-1";
  up.checksum = up.files_checksum = "f00d";
  {
    absl::MutexLock lock(&store->mu());
    ASSERT_OK(store->Put(RootRecord("x", "qv_r4/adapter")));
    ASSERT_OK(store->Put(up));
    ASSERT_OK(store->Put(RootRecord("y", "a")));
    ASSERT_OK(store->Remove("y"));
    ASSERT_OK(store->Remove("never-there"));
    ASSERT_OK(store->PutMerged({"x", "acme/u"}));
  }
  EXPECT_TRUE(fs::exists(fs::path(dir) / "adapters" / "acme@u.json"));
  StateStore::Contents c = store->Load();
  EXPECT_THAT(c.errors, ::testing::IsEmpty());
  ASSERT_THAT(c.adapters, SizeIs(2));
  EXPECT_EQ(c.adapters[0].name, "acme/u");
  EXPECT_EQ(c.adapters[0].files, "upload-1");
  EXPECT_EQ(c.adapters[0].files_checksum, "f00d");
  EXPECT_EQ(c.adapters[1].name, "x");
  EXPECT_EQ(c.adapters[1].root_path, "qv_r4/adapter");
  EXPECT_FALSE(c.adapters[1].created.empty());
  EXPECT_THAT(c.merged, ElementsAre("x", "acme/u"));
}

TEST(StateStoreTest, CorruptRecordsAreQuarantinedAndLeftoversRemoved) {
  const std::string dir = MakeTempDir() + "/state";
  {
    ASSERT_OK_AND_ASSIGN(auto store, StateStore::Open(dir));
    absl::MutexLock lock(&store->mu());
    for (const char* n : {"good", "truncated", "altered", "renamed"}) ASSERT_OK(store->Put(RootRecord(n, n)));
    ASSERT_OK(store->PutMerged({"good"}));
  }
  const fs::path adapters = fs::path(dir) / "adapters";
  const std::string t = Slurp((adapters / "truncated.json").string());
  Spit((adapters / "truncated.json").string(), t.substr(0, t.size() / 2));
  std::string a = Slurp((adapters / "altered.json").string());
  a.replace(a.find("\"altered\""), 9, "\"alterex\"");
  Spit((adapters / "altered.json").string(), a);
  fs::rename(adapters / "renamed.json", adapters / "other.json");
  Spit((adapters / "x.json.tmp.77.0").string(), "{");
  Spit((fs::path(dir) / "merged.json").string(), "not json");
  fs::create_directories(fs::path(dir) / "files" / "upload-orphan");
  fs::create_directories(fs::path(dir) / "files" / "upload-kept");

  ASSERT_OK_AND_ASSIGN(auto store, StateStore::Open(dir));
  EXPECT_FALSE(fs::exists(adapters / "x.json.tmp.77.0"));  // an interrupted write
  StateStore::Contents c = store->Load();
  ASSERT_THAT(c.adapters, SizeIs(1));
  EXPECT_EQ(c.adapters[0].name, "good");
  EXPECT_THAT(c.merged, ::testing::IsEmpty());
  ASSERT_THAT(c.errors, SizeIs(4));
  EXPECT_THAT(c.errors[0], HasSubstr("altered.json: sha256 does not match"));
  EXPECT_THAT(c.errors[1], HasSubstr("other.json: the record names adapter renamed"));
  EXPECT_THAT(c.errors[2], HasSubstr("truncated.json: not a JSON object"));
  EXPECT_THAT(c.errors[3], HasSubstr("merged.json"));
  int quarantined = 0;
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "quarantine")) quarantined += e.is_regular_file();
  EXPECT_EQ(quarantined, 4);
  EXPECT_THAT(store->Load().errors, ::testing::IsEmpty());  // read once, not again
  EXPECT_THAT(store->RemoveUnreferencedFiles({"upload-kept"}), ElementsAre("upload-orphan"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "files" / "upload-kept"));
}

TEST(StateStoreTest, AnUnwritableDirectoryFailsToOpen) {
  const std::string file = MakeTempDir() + "/plain-file";
  Spit(file, "x");
  EXPECT_FALSE(StateStore::Open(file).ok());
}

std::unique_ptr<Client> As(const TestServer& t, const std::string& token) {
  ClientOptions o;
  o.retry.max_attempts = 1;
  o.bearer_token = token;
  o.default_deadline = absl::Seconds(60);
  return t.NewClient(o);
}

TEST(StateServerTest, TenantsAdaptersMergesAndUploadsSurviveARestart) {
  LORASERVE_REQUIRE_SHARED();
  const std::string work = MakeTempDir();
  const std::string tenants = work + "/tenants.json";
  Spit(tenants, R"({"tenants": [
    {"id": "root", "role": "admin", "tokens": ["root-token"]},
    {"id": "acme", "role": "operator", "tokens": ["acme-token"], "adapter_dir": "qv_r4"},
    {"id": "beta", "role": "operator", "tokens": ["beta-token"], "adapter_dir": ""}]})");
  auto options = TestServer::DefaultOptions();
  options.server.tenants_file = tenants;
  options.server.state_dir = work + "/state";
  options.client.bearer_token = "root-token";
  options.client.retry.max_attempts = 1;

  // (caller token, name) -> logits before the restart
  std::map<std::pair<std::string, std::string>, std::vector<float>> before;
  const std::vector<std::pair<std::string, std::string>> probes = {
      {"acme-token", "x"}, {"acme-token", "mix"}, {"beta-token", "x"}, {"beta-token", "shared/s"},
      {"root-token", ""}};
  {
    ASSERT_OK_AND_ASSIGN(auto t, TestServer::Start(options));
    auto acme = As(*t, "acme-token");
    auto beta = As(*t, "beta-token");
    ASSERT_OK(acme->LoadAdapter("x", "adapter").status());  // qv_r4/adapter, in acme's directory
    ASSERT_OK(beta->UploadAdapter("x", PeftRoot() + "/qv_r4_b/adapter").status());
    ASSERT_OK(t->client().LoadAdapter("shared/s", "all_linear_r8_rslora/adapter").status());
    CombineRequest combine;
    combine.name = "mix";
    combine.sources = {{"x", 0.5}, {"shared/s", 0.5}};
    combine.combination_type = "cat";
    ASSERT_OK(acme->CombineAdapters(combine).status());
    ASSERT_OK(t->client().MergeAdapter("acme/x").status());
    for (const auto& [token, name] : probes) {
      absl::StatusOr<std::vector<float>> logits = ScoreLogits(*As(*t, token), name);
      ASSERT_OK(logits.status());
      before[std::make_pair(token, name)] = *logits;
    }
    // Deleted before the restart: gone after it, and its upload's files with it.
    ASSERT_OK(beta->UploadAdapter("gone", PeftRoot() + "/qv_r4/adapter").status());
    ASSERT_OK(beta->DeleteAdapter("gone"));
  }
  const fs::path state(options.server.state_dir);
  std::vector<std::string> records;
  for (const auto& e : fs::directory_iterator(state / "adapters")) records.push_back(e.path().filename().string());
  std::sort(records.begin(), records.end());
  EXPECT_THAT(records, ElementsAre("acme@mix.json", "acme@x.json", "beta@x.json", "shared@s.json"));

  ASSERT_OK_AND_ASSIGN(auto t, TestServer::Start(options));
  EXPECT_THAT(t->logs().Matching({"event=state_restored", "records=4 restored=4 merged=1 skipped=0"}), SizeIs(1));
  auto acme = As(*t, "acme-token");
  auto beta = As(*t, "beta-token");
  for (const auto& [token, name] : probes) {
    ASSERT_OK_AND_ASSIGN(std::vector<float> after, ScoreLogits(*As(*t, token), name));
    EXPECT_TRUE((after == before[std::make_pair(token, name)])) << token << " " << name << ": not bit-identical";
  }
  ASSERT_OK_AND_ASSIGN(AdapterInfo x, acme->GetAdapter("x"));
  EXPECT_EQ(x.state, AdapterState::kMerged);
  EXPECT_EQ(x.source, AdapterSource::kAdapterRoot);
  EXPECT_EQ(x.path, "adapter");  // as acme named it, relative to its adapter directory
  ASSERT_OK_AND_ASSIGN(AdapterInfo bx, beta->GetAdapter("x"));
  EXPECT_EQ(bx.source, AdapterSource::kUpload);
  EXPECT_NE(bx.checksum, x.checksum);
  ASSERT_OK_AND_ASSIGN(AdapterInfo mix, acme->GetAdapter("mix"));
  EXPECT_EQ(mix.source, AdapterSource::kCombined);
  EXPECT_THAT(beta->GetAdapter("mix").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(beta->GetAdapter("gone").ok());
  int files = 0;
  for (const auto& e : fs::directory_iterator(state / "files")) files += e.is_directory();
  EXPECT_EQ(files, 2);  // beta's x (uploaded) and acme's mix (combined)

  // Unmerge and delete are durable too.
  ASSERT_OK(t->client().UnmergeAdapter("acme/x").status());
  ASSERT_OK(acme->DeleteAdapter("mix"));
  t.reset();
  ASSERT_OK_AND_ASSIGN(t, TestServer::Start(options));
  acme = As(*t, "acme-token");
  ASSERT_OK_AND_ASSIGN(x, acme->GetAdapter("x"));
  EXPECT_EQ(x.state, AdapterState::kReady);
  EXPECT_EQ(acme->GetAdapter("mix").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace loraserve
