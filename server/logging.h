// Server log lines: one line per event, written whole (never interleaved with another thread's
// line), prefixed with a UTC timestamp. Access lines (one per RPC) and lifecycle events go through
// here; nothing is logged per token.
// Thread-safe.
#ifndef LORASERVE_SERVER_LOGGING_H_
#define LORASERVE_SERVER_LOGGING_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace loraserve::server {

// Receives each finished line (without the trailing newline). Must be thread-safe.
using LogSink = std::function<void(absl::string_view line)>;

class Logger {
 public:
  // A null sink writes to stderr.
  explicit Logger(LogSink sink = nullptr);
  // Writes "<timestamp> loraserve <line>".
  void Log(absl::string_view line) const;

 private:
  LogSink sink_;
};

// One management call in the audit log.
struct AuditRecord {
  std::string via;         // "grpc" or "http"
  std::string call;        // e.g. "LoadAdapter", "load_lora_adapter"
  std::string request_id;
  std::string tenant;      // "" = not authenticated
  std::string role;        // "" = not authenticated
  std::string adapter;     // the engine's name(s); "" when the call names none
  std::string code;        // the final status code, e.g. "OK", "PERMISSION_DENIED"
  std::string message;     // the error message sent to the caller ("" when OK)
};

// --audit_log: one JSON object per management call, a line each, appended with one write(2)
// (O_APPEND: lines from several threads or processes never interleave). Thread-safe.
class AuditLog {
 public:
  // Opens (creates) `path` for appending; InvalidArgument naming it when that fails.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  // {"time": RFC 3339 UTC, "via", "call", "request_id", "tenant", "role", "adapter", "code",
  // "message"}; tenant and role are null for unauthenticated calls.
  void Record(const AuditRecord& record);

 private:
  explicit AuditLog(int fd) : fd_(fd) {}
  const int fd_;
};

// Whether the loraserve.v1 method `rpc` changes or exports adapters (what the audit log records).
bool IsManagementRpc(absl::string_view rpc);

// `value` as a log field value: unchanged when it is a non-empty run of printable characters
// without spaces, quotes, '=' or backslashes, otherwise double-quoted with C escapes.
std::string LogValue(absl::string_view value);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_LOGGING_H_
