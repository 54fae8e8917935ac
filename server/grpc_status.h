// The one mapping from absl::Status (what core/ and the services return) to the grpc::Status a
// caller sees. It keeps the code (absl and gRPC share the numbering), and makes the message safe to
// show a remote caller: server file-system paths replaced by their public aliases (or by ".../name"),
// LibTorch stack traces cut, everything on one line, at most kMaxStatusMessageBytes.
#ifndef LORASERVE_SERVER_GRPC_STATUS_H_
#define LORASERVE_SERVER_GRPC_STATUS_H_

#include <cstddef>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace loraserve::server {

inline constexpr size_t kMaxStatusMessageBytes = 1024;

// A server directory that may appear in messages and the name callers know it by, e.g.
// {"/srv/adapters", "<adapter_root>"}.
struct PathAlias {
  std::string prefix;
  std::string replacement;
};

// The message with every alias prefix replaced (longest first), every other absolute path reduced
// to ".../<last component>", text from a LibTorch "Exception raised from" / "frame #" trace on
// dropped, whitespace runs collapsed to one space, and the result capped at `max_bytes` (cut on a
// UTF-8 boundary, "..." appended).
std::string SanitizeStatusMessage(absl::string_view message, const std::vector<PathAlias>& aliases,
                                  size_t max_bytes = kMaxStatusMessageBytes);

// Same code, sanitized message. OK maps to OK.
grpc::Status ToGrpcStatus(const absl::Status& status, const std::vector<PathAlias>& aliases = {});

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_GRPC_STATUS_H_
