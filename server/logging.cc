#include "server/logging.h"

#include <cstdio>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace loraserve::server {

Logger::Logger(LogSink sink) : sink_(std::move(sink)) {}

void Logger::Log(absl::string_view line) const {
  std::string full = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " loraserve ",
      line);
  if (sink_) {
    sink_(full);
    return;
  }
  full += '\n';
  // One fwrite per line: stdio locks the stream, so lines never interleave.
  std::fwrite(full.data(), 1, full.size(), stderr);
}

std::string LogValue(absl::string_view value) {
  bool plain = !value.empty();
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= ' ' || u >= 0x7f || c == '"' || c == '=' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) return std::string(value);
  return absl::StrCat("\"", absl::CHexEscape(value), "\"");
}

}  // namespace loraserve::server
