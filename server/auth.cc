#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace loraserve::server {

BearerTokenAuth::Digest BearerTokenAuth::DigestOf(absl::string_view token) {
  Digest d{};
  unsigned int len = 0;
  EVP_Digest(token.data(), token.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

absl::StatusOr<std::unique_ptr<BearerTokenAuth>> BearerTokenAuth::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the auth tokens file ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the auth tokens file ", path));
  }
  return FromText(text.str(), path);
}

absl::StatusOr<std::unique_ptr<BearerTokenAuth>> BearerTokenAuth::FromText(absl::string_view text,
                                                                           absl::string_view source) {
  std::vector<Digest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    for (char c : line) {
      // RFC 6750 tokens are printable ASCII without spaces; anything else would never match what
      // a client can send.
      if (c <= ' ' || c > '~') {
        return absl::InvalidArgumentError(absl::StrCat(
            "auth tokens file ", source, " line ", line_number,
            ": a token must be printable ASCII without whitespace (one token per line)"));
      }
    }
    digests.push_back(DigestOf(line));
  }
  if (digests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "auth tokens file ", source,
        " has no token (one per line; blank lines and lines starting with # are ignored)"));
  }
  return std::unique_ptr<BearerTokenAuth>(new BearerTokenAuth(std::move(digests)));
}

absl::Status BearerTokenAuth::Check(std::optional<absl::string_view> authorization) const {
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "missing authorization metadata: this server requires \"authorization: Bearer <token>\"");
  }
  absl::string_view value = *authorization;
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "malformed authorization metadata: expected \"Bearer <token>\"");
  }
  const absl::string_view token = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "malformed authorization metadata: expected \"Bearer <token>\"");
  }
  // Compare against every known digest without stopping early: the time taken does not depend on
  // which token (if any) matched, nor, thanks to hashing, on the presented token's length.
  const Digest presented = DigestOf(token);
  int differs_from_all = 1;
  for (const Digest& known : digests_) {
    const int differs = CRYPTO_memcmp(presented.data(), known.data(), presented.size()) != 0;
    differs_from_all &= differs;
  }
  if (differs_from_all != 0) return absl::UnauthenticatedError("unknown bearer token");
  return absl::OkStatus();
}

}  // namespace loraserve::server
