#include "server/state_store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "core/io/file_util.h"
#include "nlohmann/json.hpp"
#include "transfer/file_transfer.h"

namespace loraserve::server {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kAdapterFormat[] = "loraserve.state.adapter/1";
constexpr char kMergedFormat[] = "loraserve.state.merged/1";
constexpr char kTempMarker[] = ".tmp.";

std::string Digest(const std::string& text) {
  transfer::Sha256 h;
  h.Update(text);
  return h.HexDigest();
}

// The record inside an envelope written by WriteRecord; an error saying what is wrong otherwise.
absl::StatusOr<Json> ReadRecord(const std::string& path, const std::string& format) {
  absl::StatusOr<std::string> text = core::ReadFile(path, 1 << 20);
  if (!text.ok()) return text.status();
  Json doc = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return absl::DataLossError("not a JSON object (truncated?)");
  if (!doc.contains("format") || doc["format"] != format) {
    return absl::DataLossError(absl::StrCat("format is not ", format));
  }
  if (!doc.contains("record") || !doc["record"].is_object() || !doc.contains("sha256") ||
      !doc["sha256"].is_string()) {
    return absl::DataLossError("record or sha256 missing");
  }
  if (Digest(doc["record"].dump()) != doc["sha256"].get<std::string>()) {
    return absl::DataLossError("sha256 does not match the record (altered or corrupt)");
  }
  return doc["record"];
}

std::string StringField(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

absl::StatusOr<AdapterRecord> AdapterFromJson(const Json& j) {
  AdapterRecord r;
  r.name = StringField(j, "name");
  r.origin = StringField(j, "origin");
  r.path = StringField(j, "path");
  r.root_path = StringField(j, "root_path");
  r.files = StringField(j, "files");
  r.checksum = StringField(j, "checksum");
  r.files_checksum = StringField(j, "files_checksum");
  r.created = StringField(j, "created");
  if (j.contains("recipe")) r.recipe_json = j["recipe"].dump();
  if (r.name.empty()) return absl::DataLossError("the record has no name");
  if (r.origin == "adapter_root") {
    if (r.root_path.empty()) return absl::DataLossError("an adapter_root record without root_path");
  } else if (r.origin == "upload" || r.origin == "combined") {
    if (r.files.empty() || r.files.find('/') != std::string::npos || r.files.front() == '.') {
      return absl::DataLossError("an upload or combined record without a valid files directory");
    }
  } else {
    return absl::DataLossError(absl::StrCat("unknown origin \"", r.origin, "\""));
  }
  return r;
}

Json AdapterToJson(const AdapterRecord& r) {
  Json j = {{"name", r.name}, {"origin", r.origin}, {"created", r.created}};
  if (!r.path.empty()) j["path"] = r.path;
  if (!r.root_path.empty()) j["root_path"] = r.root_path;
  if (!r.files.empty()) j["files"] = r.files;
  if (!r.checksum.empty()) j["checksum"] = r.checksum;
  if (!r.files_checksum.empty()) j["files_checksum"] = r.files_checksum;
  if (!r.recipe_json.empty()) {
    Json recipe = Json::parse(r.recipe_json, nullptr, /*allow_exceptions=*/false);
    if (!recipe.is_discarded()) j["recipe"] = recipe;
  }
  return j;
}

// Writes `record` in its envelope (format, record, SHA-256 of the record's JSON), durably.
absl::Status WriteRecord(const std::string& path, const char* format, const Json& record) {
  const Json doc = {{"format", format}, {"record", record}, {"sha256", Digest(record.dump())}};
  absl::Status s = core::WriteFileAtomically(path, doc.dump(1) + "\n");
  if (!s.ok()) return absl::InternalError(absl::StrCat("cannot write the state record: ", s.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path root = fs::canonical(dir, ec);
  if (ec || !fs::is_directory(root)) {
    return absl::InvalidArgumentError(absl::StrCat("state directory ", dir, " cannot be created"));
  }
  for (const char* sub : {"adapters", "files", "quarantine"}) {
    fs::create_directories(root / sub, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot create ", (root / sub).string(), ": ", ec.message()));
    }
  }
  if (::access(root.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("state directory ", root.string(), " is not writable: ", std::strerror(errno)));
  }
  // Temporary record files of writes a crash interrupted (never renamed, so never acknowledged).
  for (const fs::path& d : {root, root / "adapters"}) {
    for (const auto& e : fs::directory_iterator(d, ec)) {
      if (absl::StrContains(e.path().filename().string(), kTempMarker)) fs::remove(e.path(), ec);
    }
  }
  if (absl::Status s = core::SyncDirectory(root.string()); !s.ok()) return absl::InvalidArgumentError(s.message());
  return std::unique_ptr<StateStore>(new StateStore(root.string()));
}

std::string StateStore::files_dir() const { return core::JoinPath(dir_, "files"); }

std::string StateStore::RecordFileName(const std::string& name) {
  return absl::StrCat(absl::StrReplaceAll(name, {{"/", "@"}}), ".json");
}

void StateStore::Quarantine(const std::string& path) {
  std::error_code ec;
  const fs::path target = fs::path(dir_) / "quarantine" /
                          absl::StrCat(fs::path(path).filename().string(), ".", absl::ToUnixMillis(absl::Now()));
  fs::rename(path, target, ec);
  if (ec) fs::remove(path, ec);
  (void)core::SyncDirectory(fs::path(path).parent_path().string());
}

StateStore::Contents StateStore::Load() {
  Contents out;
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(dir_) / "adapters", ec)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) {
    const std::string name = file.filename().string();
    absl::StatusOr<AdapterRecord> record = [&]() -> absl::StatusOr<AdapterRecord> {
      if (!absl::EndsWith(name, ".json")) return absl::DataLossError("not a record file");
      absl::StatusOr<Json> j = ReadRecord(file.string(), kAdapterFormat);
      if (!j.ok()) return j.status();
      absl::StatusOr<AdapterRecord> r = AdapterFromJson(*j);
      if (r.ok() && RecordFileName(r->name) != name) {
        return absl::DataLossError(absl::StrCat("the record names adapter ", r->name));
      }
      return r;
    }();
    if (!record.ok()) {
      out.errors.push_back(absl::StrCat("adapters/", name, ": ", record.status().message()));
      Quarantine(file.string());
      continue;
    }
    out.adapters.push_back(*std::move(record));
  }
  const std::string merged_path = core::JoinPath(dir_, "merged.json");
  if (core::FileExists(merged_path)) {
    absl::StatusOr<Json> j = ReadRecord(merged_path, kMergedFormat);
    if (j.ok() && j->contains("merged") && (*j)["merged"].is_array()) {
      for (const Json& n : (*j)["merged"]) {
        if (n.is_string()) out.merged.push_back(n.get<std::string>());
      }
    } else {
      out.errors.push_back(
          absl::StrCat("merged.json: ", j.ok() ? "no merged list" : std::string(j.status().message())));
      Quarantine(merged_path);
    }
  }
  return out;
}

absl::Status StateStore::Put(const AdapterRecord& record) {
  AdapterRecord r = record;
  if (r.created.empty()) r.created = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  return WriteRecord(core::JoinPath(core::JoinPath(dir_, "adapters"), RecordFileName(r.name)), kAdapterFormat,
                     AdapterToJson(r));
}

absl::Status StateStore::Remove(const std::string& name) {
  const std::string path = core::JoinPath(core::JoinPath(dir_, "adapters"), RecordFileName(name));
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("cannot remove the state record of ", name, ": ", std::strerror(errno)));
  }
  absl::Status s = core::SyncDirectory(core::JoinPath(dir_, "adapters"));
  if (!s.ok()) return absl::InternalError(absl::StrCat("cannot remove the state record: ", s.message()));
  return absl::OkStatus();
}

absl::Status StateStore::PutMerged(const std::vector<std::string>& merged) {
  return WriteRecord(core::JoinPath(dir_, "merged.json"), kMergedFormat, Json{{"merged", merged}});
}

std::vector<std::string> StateStore::RemoveUnreferencedFiles(const std::set<std::string>& referenced) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(files_dir(), ec)) {
    const std::string name = e.path().filename().string();
    if (referenced.count(name) != 0) continue;
    transfer::RemoveTree(e.path().string());
    removed.push_back(name);
  }
  std::sort(removed.begin(), removed.end());
  if (!removed.empty()) (void)core::SyncDirectory(files_dir());
  return removed;
}

}  // namespace loraserve::server
