#include "server/durable_state.h"

#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/engine/engine.h"
#include "core/io/file_util.h"
#include "server/adapter_service.h"
#include "server/service_env.h"
#include "server/state_store.h"
#include "transfer/file_transfer.h"

namespace loraserve::server {
namespace {

namespace fs = std::filesystem;

const char* OriginName(AdapterOrigin origin) {
  switch (origin) {
    case AdapterOrigin::kAdapterRoot: return "adapter_root";
    case AdapterOrigin::kUpload: return "upload";
    case AdapterOrigin::kCombined: return "combined";
    case AdapterOrigin::kUnknown: break;
  }
  return "";
}

// The record of an adapter the book knows; nullopt for one that cannot be restored (an
// in-memory adapter whose files were not kept).
absl::StatusOr<std::optional<AdapterRecord>> RecordFor(const StateStore& store, const std::string& name,
                                                       const AdapterProvenance& p) {
  AdapterRecord r;
  r.name = name;
  r.origin = OriginName(p.origin);
  r.checksum = p.checksum;
  switch (p.origin) {
    case AdapterOrigin::kAdapterRoot:
      if (p.root_path.empty()) return std::optional<AdapterRecord>();
      r.path = p.relative_path;
      r.root_path = p.root_path;
      break;
    case AdapterOrigin::kUpload:
    case AdapterOrigin::kCombined: {
      if (p.upload_dir.empty()) return std::optional<AdapterRecord>();
      const fs::path dir(p.upload_dir);
      if (dir.parent_path() != fs::path(store.files_dir())) {
        return absl::InternalError(absl::StrCat("the files of adapter ", name, " are not in the state directory"));
      }
      r.files = dir.filename().string();
      r.files_checksum = p.origin == AdapterOrigin::kUpload ? p.checksum : p.files_checksum;
      r.recipe_json = p.recipe_json;
      break;
    }
    case AdapterOrigin::kUnknown: return std::optional<AdapterRecord>();
  }
  return std::optional<AdapterRecord>(std::move(r));
}

// The directory a record's adapter loads from, checked against its checksum.
absl::StatusOr<std::string> RecordDir(const ServiceEnv& env, const AdapterRecord& r) {
  std::string dir;
  std::string expected;
  if (r.origin == "adapter_root") {
    absl::StatusOr<std::string> resolved = ResolveUnderRoot(env.config.adapter_root, r.root_path);
    if (!resolved.ok()) {
      return absl::Status(resolved.status().code(),
                          absl::StrCat("--adapter_root/", r.root_path, ": ", resolved.status().message()));
    }
    dir = *resolved;
    expected = r.checksum;
  } else {
    dir = core::JoinPath(env.state->files_dir(), r.files);
    if (!core::IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("files/", r.files, " is missing"));
    expected = r.files_checksum;
  }
  if (!expected.empty()) {
    absl::StatusOr<std::string> got = transfer::AdapterChecksumOfDir(dir);
    if (!got.ok()) return got.status();
    if (*got != expected) {
      return absl::DataLossError(absl::StrCat("the files changed since the adapter was loaded (checksum ", *got,
                                              ", recorded ", expected, ")"));
    }
  }
  return dir;
}

AdapterProvenance ProvenanceOf(const AdapterRecord& r, const std::string& dir) {
  AdapterProvenance p;
  if (r.origin == "adapter_root") {
    p.origin = AdapterOrigin::kAdapterRoot;
    p.relative_path = r.path;
    p.root_path = r.root_path;
  } else {
    p.origin = r.origin == "upload" ? AdapterOrigin::kUpload : AdapterOrigin::kCombined;
    p.upload_dir = dir;
    p.files_checksum = r.files_checksum;
    p.recipe_json = r.recipe_json;
  }
  p.checksum = r.checksum;
  return p;
}

}  // namespace

absl::Status PersistAdapter(ServiceEnv& env, const core::Engine& engine, const std::string& name) {
  if (env.state == nullptr) return absl::OkStatus();
  StateStore& store = *env.state;
  absl::MutexLock lock(&store.mu());
  const std::optional<AdapterProvenance> p = env.book.Find(name);
  if (!engine.GetAdapter(name).ok() || !p.has_value()) return store.Remove(name);
  absl::StatusOr<std::optional<AdapterRecord>> record = RecordFor(store, name, *p);
  if (!record.ok()) return record.status();
  if (!record->has_value()) return store.Remove(name);
  return store.Put(**record);
}

absl::Status PersistMerges(ServiceEnv& env, const core::Engine& engine) {
  if (env.state == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&env.state->mu());
  return env.state->PutMerged(engine.MergedAdapters());
}

RestoreReport RestoreState(ServiceEnv& env, core::Engine& engine) {
  RestoreReport report;
  if (env.state == nullptr) return report;
  const absl::Time start = absl::Now();
  StateStore::Contents contents = env.state->Load();
  report.errors = contents.errors;
  report.records = static_cast<int>(contents.adapters.size());
  std::set<std::string> referenced;
  for (const AdapterRecord& r : contents.adapters) {
    // A record that fails keeps its files: fix them (or the adapter root) and restart.
    if (!r.files.empty()) referenced.insert(r.files);
    absl::StatusOr<std::string> dir = RecordDir(env, r);
    absl::Status s = dir.status();
    // Under an adapter budget the weights load when requests need them (a state directory may
    // name far more adapters than fit).
    if (s.ok()) s = engine.LoadAdapter(r.name, *dir, env.config.restore_register_only).status();
    if (!s.ok()) {
      report.errors.push_back(absl::StrCat("adapter ", r.name, ": ", s.message()));
      continue;
    }
    env.book.Record(r.name, ProvenanceOf(r, *dir));
    ++report.restored;
  }
  for (const std::string& name : contents.merged) {
    absl::Notification done;
    absl::Status merged;
    engine.MergeAdapter(name, [&](absl::StatusOr<bool> r) {
      merged = r.status();
      done.Notify();
    });
    done.WaitForNotification();
    if (!merged.ok()) {
      report.errors.push_back(absl::StrCat("merge of ", name, ": ", merged.message()));
      continue;
    }
    ++report.merged;
  }
  // The merge record as it now is (a failed merge drops out of it).
  if (absl::Status s = PersistMerges(env, engine); !s.ok()) report.errors.push_back(std::string(s.message()));
  report.removed_files = env.state->RemoveUnreferencedFiles(referenced);
  report.took = absl::Now() - start;
  for (const std::string& e : report.errors) {
    env.logger.Log(absl::StrCat("event=state_record_skipped error=", LogValue(e)));
  }
  env.logger.Log(absl::StrFormat(
      "event=state_restored dir=%s records=%d restored=%d merged=%d skipped=%d removed_files=%d ms=%.1f",
      LogValue(env.state->dir()), report.records, report.restored, report.merged,
      static_cast<int>(report.errors.size()), static_cast<int>(report.removed_files.size()),
      absl::ToDoubleMilliseconds(report.took)));
  return report;
}

}  // namespace loraserve::server
