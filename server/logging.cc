#include "server/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "nlohmann/json.hpp"

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

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot open the audit log ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(fd));
}

AuditLog::~AuditLog() { ::close(fd_); }

void AuditLog::Record(const AuditRecord& r) {
  nlohmann::json j = {
      {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
      {"via", r.via},
      {"call", r.call},
      {"request_id", r.request_id},
      {"tenant", r.tenant.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.tenant)},
      {"role", r.role.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.role)},
      {"adapter", r.adapter},
      {"code", r.code},
      {"message", r.message},
  };
  // Invalid UTF-8 (a hostile name) is replaced rather than thrown on.
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a full disk must not fail the call; the access log still has it
    done += static_cast<size_t>(n);
  }
}

bool IsManagementRpc(absl::string_view rpc) {
  for (const char* m : {"LoadAdapter", "UploadAdapter", "DeleteAdapter", "MergeAdapter", "UnmergeAdapter",
                        "UnloadAll", "CombineAdapters", "SaveAdapter", "ExportMergedModel"}) {
    if (rpc == m) return true;
  }
  return false;
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
