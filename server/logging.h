// Server log lines: one line per event, written whole (never interleaved with another thread's
// line), prefixed with a UTC timestamp. Access lines (one per RPC) and lifecycle events go through
// here; nothing is logged per token.
// Thread-safe.
#ifndef LORASERVE_SERVER_LOGGING_H_
#define LORASERVE_SERVER_LOGGING_H_

#include <functional>
#include <string>

#include "absl/strings/string_view.h"

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

// `value` as a log field value: unchanged when it is a non-empty run of printable characters
// without spaces, quotes, '=' or backslashes, otherwise double-quoted with C escapes.
std::string LogValue(absl::string_view value);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_LOGGING_H_
