// What the gRPC layer knows about adapters beyond the engine: where each came from and its content
// checksum (for ListAdapters, idempotent loads, and removing upload directories when the adapter
// goes away) and which are still loading.
// Thread-safe.
#ifndef LORASERVE_SERVER_ADAPTER_BOOK_H_
#define LORASERVE_SERVER_ADAPTER_BOOK_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace loraserve::server {

enum class AdapterOrigin { kUnknown, kAdapterRoot, kUpload, kCombined };

struct AdapterProvenance {
  AdapterOrigin origin = AdapterOrigin::kUnknown;
  std::string relative_path;  // kAdapterRoot: the directory relative to the caller's adapter root
  std::string root_path;      // kAdapterRoot: the directory relative to --adapter_root
  // kUpload, and kCombined under --state_dir: the server directory holding the files (removed
  // when the adapter is deleted).
  std::string upload_dir;
  // kAdapterRoot / kUpload: loraserve.v1.Adapter.checksum of the files loaded; "" otherwise.
  std::string checksum;
  // kCombined under --state_dir: the checksum of the saved files, and the request as JSON.
  std::string files_checksum;
  std::string recipe_json;
};

class AdapterBook {
 public:
  // Reserves `name` while it loads. AlreadyExists if it is loading already.
  absl::Status BeginLoad(const std::string& name);
  // Ends the load of `name`; records `provenance` when the load succeeded.
  void EndLoad(const std::string& name, std::optional<AdapterProvenance> provenance);
  bool IsLoading(const std::string& name) const;
  std::vector<std::string> Loading() const;
  int loading_count() const;

  void Record(const std::string& name, AdapterProvenance provenance);
  std::optional<AdapterProvenance> Find(const std::string& name) const;
  // Forgets `name` and returns what was recorded.
  std::optional<AdapterProvenance> Forget(const std::string& name);
  // Forgets everything recorded (not the loads in progress) and returns it.
  std::vector<AdapterProvenance> ForgetAll();

 private:
  mutable absl::Mutex mu_;
  std::set<std::string> loading_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AdapterProvenance> provenance_ ABSL_GUARDED_BY(mu_);
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_ADAPTER_BOOK_H_
