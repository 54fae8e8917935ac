// Durable server state under --state_dir (README "Durable state"): one record per adapter and one
// record of the merge order, each written atomically and durably (temporary file, fsync, rename,
// fsync of the directory) before the call that changed it is acknowledged, and read back on start.
//
//   <state_dir>/adapters/<name>.json   one adapter (its engine name, "/" written as "@")
//   <state_dir>/merged.json            the merged adapters, in merge order
//   <state_dir>/files/<dir>/           the files of uploaded and combined adapters
//   <state_dir>/quarantine/            records that could not be read, moved aside at start
//
// Each record is {"format": ..., "record": {...}, "sha256": SHA-256 of the record's JSON}: a
// truncated or altered record fails the check and is quarantined with a logged error, never
// half-applied. Writers hold mu(); Load and RemoveUnreferencedFiles run at start, alone.
#ifndef LORASERVE_SERVER_STATE_STORE_H_
#define LORASERVE_SERVER_STATE_STORE_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace loraserve::server {

struct AdapterRecord {
  std::string name;    // the engine's name ("<namespace>/<name>" under tenants)
  std::string origin;  // "adapter_root" | "upload" | "combined"
  // adapter_root: the directory as the caller named it (relative to its adapter directory) and
  // relative to --adapter_root.
  std::string path;
  std::string root_path;
  // upload / combined: the directory under <state_dir>/files holding the adapter's files.
  std::string files;
  // loraserve.v1.Adapter.checksum of the files loaded (adapter_root / upload); "" for combined.
  std::string checksum;
  // The same checksum over the files in `files` (upload / combined), checked before a restore.
  std::string files_checksum;
  // combined: the CombineAdapters request as JSON, with the sources' engine names.
  std::string recipe_json;
  std::string created;  // RFC 3339, UTC
};

class StateStore {
 public:
  // Creates the layout under `dir` if missing and removes temporary files a crash left behind.
  // InvalidArgument if it cannot be created or written.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // <state_dir>/files: where uploads are written and combined adapters saved.
  std::string files_dir() const;

  struct Contents {
    std::vector<AdapterRecord> adapters;  // sorted by name
    std::vector<std::string> merged;      // merge order
    // One line per record that could not be read (moved to quarantine/): file and reason.
    std::vector<std::string> errors;
  };
  // Reads every record; unreadable ones are moved to quarantine/ and reported in `errors`.
  Contents Load();

  // Writes (replaces) the record of `record.name`, durably. With mu() held.
  absl::Status Put(const AdapterRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the record of `name` (OK if there is none), durably. With mu() held.
  absl::Status Remove(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replaces the merge order, durably. With mu() held.
  absl::Status PutMerged(const std::vector<std::string>& merged) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes every entry of files/ that no record names (uploads a crash interrupted, files of
  // deleted adapters); returns their names.
  std::vector<std::string> RemoveUnreferencedFiles(const std::set<std::string>& referenced);

  // The record's file name for an adapter name ("/" -> "@"; '@' is not a name character).
  static std::string RecordFileName(const std::string& name);

  // The mutex that orders the engine's state and the records written from it: a caller reads the
  // engine and writes under it, so that the last record written reflects the latest state.
  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }

 private:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  void Quarantine(const std::string& path);

  const std::string dir_;
  absl::Mutex mu_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_STATE_STORE_H_
