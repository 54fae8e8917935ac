// Bearer-token authentication of loraserve.v1 calls (the checking is TenantDirectory's, in
// server/tenants.h; this reads --auth_tokens_file): the caller sends request metadata
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

using TokenDigest = std::array<unsigned char, 32>;
// SHA-256 of a token.
TokenDigest DigestOfToken(absl::string_view token);
// Whether `token` is printable ASCII without whitespace (RFC 6750), 1 to 4096 bytes.
bool ValidToken(absl::string_view token);
// The token of an `authorization` value "Bearer <token>" (scheme case-insensitive); Unauthenticated
// saying whether the value was missing or malformed.
absl::StatusOr<absl::string_view> BearerTokenOf(std::optional<absl::string_view> authorization);
// The index of the digest in `known` equal to `presented`, comparing with every one of them in
// constant time (the time does not depend on which one matched); -1 when none does.
int MatchDigest(const TokenDigest& presented, const std::vector<TokenDigest>& known);

class BearerTokenAuth {
 public:
  // Reads one token per line; surrounding whitespace is dropped, blank lines and lines starting
  // with '#' are ignored. InvalidArgument when the file cannot be read, a token contains
  // whitespace or non-printable characters, or there is no token at all.
  static absl::StatusOr<std::unique_ptr<BearerTokenAuth>> FromFile(const std::string& path);
  // The same rules over the file's text (`source` names it in error messages).
  static absl::StatusOr<std::unique_ptr<BearerTokenAuth>> FromText(absl::string_view text,
                                                                   absl::string_view source);

  int size() const { return static_cast<int>(digests_.size()); }
  const std::vector<TokenDigest>& digests() const { return digests_; }

 private:
  explicit BearerTokenAuth(std::vector<TokenDigest> digests) : digests_(std::move(digests)) {}

  std::vector<TokenDigest> digests_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_AUTH_H_
