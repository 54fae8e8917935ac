// What loractl's commands share: the global flags, the connection they
// describe, and the way results and errors are reported (human text or JSON,
// exit codes).
#ifndef CLIENT_LORACTL_CONTEXT_H_
#define CLIENT_LORACTL_CONTEXT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "client/client.h"
#include "client/loractl/output.h"
#include "nlohmann/json.hpp"

namespace CLI {
class App;
}  // namespace CLI

namespace loraserve::loractl {

using Json = nlohmann::ordered_json;  // keys in the order written

constexpr int kUsageError = 64;  // sysexits.h EX_USAGE

// The global flags, accepted before or after the command.
struct GlobalFlags {
  // --addr (env LORASERVE_ADDR), --timeout, --tls, --tls_server_name.
  loraserve::ClientOptions client;
  int retries = loraserve::RetryPolicy().max_attempts - 1;
  std::string request_id;
  std::optional<std::string> token;
  std::optional<std::string> token_file;
  std::optional<std::string> tls_ca_file;
  std::optional<std::string> tls_cert_file;
  std::optional<std::string> tls_key_file;
  std::optional<std::string> tls_server_name;
  bool json = false;
  bool quiet = false;
  bool progress = false;
  bool all = false;  // --all: the command on every replica --addr resolves to (replicas.h)
};

// Adds the global flags to the root app (its subcommands pass unknown flags up
// to it).
void AddGlobalFlags(CLI::App* root, GlobalFlags* flags);

// Reports a usage error that is not about one command (human text or, with
// `json`, an error document on stderr) and returns kUsageError.
int UsageError(bool json, const std::string& message);

// One run of one command: the output mode, the client, per-call options, error
// reporting. Not thread-safe.
class Context {
 public:
  // `command`: its name as typed ("adapters list"), for messages.
  Context(std::string command, const GlobalFlags& flags)
      : command_(std::move(command)), flags_(flags) {}

  // Turns the global flags into a client (commands that talk gRPC). Returns 0,
  // or the usage error code after reporting a bad flag or an unreadable
  // --token_file / TLS file.
  int Connect();

  loraserve::Client& client() { return *client_; }
  loraserve::CallOptions call() const;
  const GlobalFlags& flags() const { return flags_; }
  bool json() const { return flags_.json; }
  bool quiet() const { return flags_.quiet; }

  // Prints a failed call (human or JSON on stderr) and returns its exit code.
  int Fail(const absl::Status& status) const;
  // Prints a usage error of this command and returns kUsageError.
  int Usage(const std::string& message) const;
  // Writes the one JSON document of a --json run.
  void Emit(const Json& doc) const;
  // A progress bar for a transfer when progress is shown, else nullptr.
  std::unique_ptr<ProgressBar> Progress(const std::string& label) const;
  static loraserve::ProgressCallback Callback(ProgressBar* bar);

  // The text of each distinct id in `ids` (one call; empty when there are too
  // many or the server fails).
  std::map<int32_t, std::string> TokenTexts(const std::set<int32_t>& ids);

  // --all: the replica this run talks to (named in human error messages) and,
  // with --json, the replica's entry of the one document: Emit stores the
  // result under "result" and Fail the error under "error" instead of printing.
  void set_replica(std::string address, Json* capture) {
    replica_ = std::move(address);
    capture_ = capture;
  }

 private:
  const std::string command_;
  const GlobalFlags& flags_;
  std::unique_ptr<loraserve::Client> client_;
  std::string replica_;
  Json* capture_ = nullptr;
};

// The text of `id` for a table, quoted; "" when `texts` lacks it.
std::string TextOf(const std::map<int32_t, std::string>& texts, int32_t id);

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_CONTEXT_H_
