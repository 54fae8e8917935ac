// libFuzzer target: each RPC's request validation that runs before the engine sees a request. The
// first byte picks the message, the rest is its wire encoding (or text):
//   0 GenerateRequest        ValidateGenerateRequest (sampling, text xor ids, vocabulary)
//   1 ScoreRequest           ValidateScoreRequest (ids, context, top_logprobs, reply size)
//   2 CombineAdaptersRequest CombineOptionsFromProto, every name through the tenant resolution
//   3 LoadAdapterRequest     the adapter name, and the path under an adapter root (ResolveUnderRoot:
//                            an accepted path must lie inside the root)
//   4 adapter names          ResolveAdapterName for each role and access: an operator or user never
//                            gets another tenant's engine name; Display inverts Resolve
//   5 tenants file           TenantDirectory::FromJson
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "absl/strings/match.h"
#include "loraserve/v1/adapter_service.pb.h"
#include "loraserve/v1/inference_service.pb.h"
#include "server/adapter_service.h"
#include "server/proto_convert.h"
#include "server/tenants.h"

namespace {

namespace fs = std::filesystem;
namespace pb = ::loraserve::v1;
using loraserve::server::Access;
using loraserve::server::Caller;
using loraserve::server::TenantDirectory;

constexpr char kTenants[] = R"({"tenants": [
  {"id": "root", "role": "admin", "tokens": ["t-root"]},
  {"id": "acme", "role": "operator", "tokens": ["t-acme"]},
  {"id": "app", "namespace": "acme", "role": "user", "tokens": ["t-app"]}]})";

const std::shared_ptr<const TenantDirectory>& Directory() {
  static const std::shared_ptr<const TenantDirectory> d = [] {
    auto parsed = TenantDirectory::FromJson(kTenants, "fuzz-tenants.json");
    if (!parsed.ok()) std::abort();
    return *parsed;
  }();
  return d;
}

Caller CallerFor(const char* token) {
  Caller c;
  c.directory = Directory();
  auto spec = Directory()->Authenticate(std::string("Bearer ") + token);
  if (!spec.ok()) std::abort();
  c.tenant = *spec;
  return c;
}

const fs::path& Root() {
  static const fs::path root = [] {
    char tmpl[] = "/tmp/loraserve-fuzz-root-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) std::abort();
    fs::create_directories(fs::path(tmpl) / "root" / "a" / "b");
    fs::create_directories(fs::path(tmpl) / "outside");
    std::error_code ec;
    fs::create_directory_symlink("../../outside", fs::path(tmpl) / "root" / "a" / "link", ec);
    return fs::canonical(fs::path(tmpl) / "root");
  }();
  return root;
}

void CheckName(const std::string& name) {
  static const Caller callers[] = {CallerFor("t-root"), CallerFor("t-acme"), CallerFor("t-app")};
  for (const Caller& c : callers) {
    for (Access a : {Access::kUse, Access::kManage, Access::kCreate}) {
      auto internal = loraserve::server::ResolveAdapterName(c, name, a, "name", /*allow_empty=*/true);
      if (!internal.ok() || internal->empty()) continue;
      if (c.tenant->role != loraserve::server::Role::kAdmin && !absl::StartsWith(*internal, "acme/") &&
          !absl::StartsWith(*internal, "shared/")) {
        std::abort();  // a foreign namespace reached
      }
      auto shown = loraserve::server::DisplayAdapterName(c, *internal);
      if (!shown.has_value()) std::abort();
      auto again = loraserve::server::ResolveAdapterName(c, *shown, Access::kUse, "name");
      if (!again.ok() || *again != *internal) std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in string fields is an expected parse failure here, not worth a log line each.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 6) {
    case 0: {
      pb::GenerateRequest r;
      if (!r.ParseFromString(rest)) return 0;
      (void)loraserve::server::ValidateGenerateRequest(r, 512);
      CheckName(r.adapter());
      break;
    }
    case 1: {
      pb::ScoreRequest r;
      if (!r.ParseFromString(rest)) return 0;
      (void)loraserve::server::ValidateScoreRequest(r, 512, 512, 64 << 20);
      CheckName(r.adapter());
      break;
    }
    case 2: {
      pb::CombineAdaptersRequest r;
      if (!r.ParseFromString(rest)) return 0;
      (void)loraserve::server::CombineOptionsFromProto(r);
      CheckName(r.name());
      for (const auto& s : r.sources()) CheckName(s.name());
      break;
    }
    case 3: {
      pb::LoadAdapterRequest r;
      if (!r.ParseFromString(rest)) return 0;
      CheckName(r.name());
      auto dir = loraserve::server::ResolveUnderRoot(Root().string(), r.path());
      if (dir.ok()) {
        const std::string root = Root().string();
        if (*dir != root && !absl::StartsWith(*dir, root + "/")) std::abort();  // escaped the root
      }
      break;
    }
    case 4:
      CheckName(rest);
      break;
    default:
      (void)TenantDirectory::FromJson(rest, "fuzz-tenants.json");
      break;
  }
  return 0;
}
