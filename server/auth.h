// Bearer-token authentication of loraserve.v1 calls: the caller sends request metadata
// `authorization: Bearer <token>` with one of the tokens the server was started with
// (--auth_tokens_file). Only SHA-256 digests of the tokens are kept, and a presented token is
// compared with every one of them in constant time, so neither timing nor a memory dump reveals
// the tokens. Immutable after creation; thread-safe.
#ifndef LORASERVE_SERVER_AUTH_H_
#define LORASERVE_SERVER_AUTH_H_

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace loraserve::server {

inline constexpr char kAuthorizationKey[] = "authorization";

class BearerTokenAuth {
 public:
  // Reads one token per line; surrounding whitespace is dropped, blank lines and lines starting
  // with '#' are ignored. InvalidArgument when the file cannot be read, a token contains
  // whitespace or non-printable characters, or there is no token at all.
  static absl::StatusOr<std::unique_ptr<BearerTokenAuth>> FromFile(const std::string& path);
  // The same rules over the file's text (`source` names it in error messages).
  static absl::StatusOr<std::unique_ptr<BearerTokenAuth>> FromText(absl::string_view text,
                                                                   absl::string_view source);

  // `authorization` is the call's `authorization` metadata value (nullopt when absent). OK when it
  // is "Bearer <token>" (scheme case-insensitive) with a known token; Unauthenticated otherwise,
  // the message saying whether the metadata was missing, malformed or the token unknown (never
  // the token itself).
  absl::Status Check(std::optional<absl::string_view> authorization) const;

  int size() const { return static_cast<int>(digests_.size()); }

 private:
  using Digest = std::array<unsigned char, 32>;
  explicit BearerTokenAuth(std::vector<Digest> digests) : digests_(std::move(digests)) {}
  static Digest DigestOf(absl::string_view token);

  std::vector<Digest> digests_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_AUTH_H_
