// The server's adapters made durable under --state_dir (server/state_store.h): each management
// call records the state it produced before it is acknowledged, and a start restores it before
// health turns SERVING. Every function is a no-op (OK) without a state directory.
//
// A record is written from what the engine and the AdapterBook hold at the time, under the
// store's mutex, so two calls racing on one name always leave the record of the later state.
#ifndef LORASERVE_SERVER_DURABLE_STATE_H_
#define LORASERVE_SERVER_DURABLE_STATE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace loraserve::core {
class Engine;
}  // namespace loraserve::core

namespace loraserve::server {

struct ServiceEnv;

// Writes the record of `name` as it is now (the engine has it and the book knows where it came
// from), or removes it (the engine has no such adapter). Internal when the state directory
// cannot be written.
absl::Status PersistAdapter(ServiceEnv& env, const core::Engine& engine, const std::string& name);
// Writes the merge order as the engine has it now.
absl::Status PersistMerges(ServiceEnv& env, const core::Engine& engine);

struct RestoreReport {
  int records = 0;   // adapter records read
  int restored = 0;  // adapters loaded again
  int merged = 0;    // merges applied again
  // One line per record skipped (unreadable, files missing or changed, load or merge failed).
  std::vector<std::string> errors;
  std::vector<std::string> removed_files;  // files/ entries no record named
  absl::Duration took;
};
// Loads every recorded adapter into `engine` (quotas do not apply: each was admitted before),
// merges the recorded merges again in their order, removes unreferenced files and logs the
// outcome (event=state_restored; event=state_record_skipped per error). Never fails: a record
// that cannot be restored is skipped with its error and kept on disk (except unreadable ones,
// moved to quarantine/), so a bad record cannot stop the server from starting.
RestoreReport RestoreState(ServiceEnv& env, core::Engine& engine);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_DURABLE_STATE_H_
