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

TokenDigest DigestOfToken(absl::string_view token) {
  TokenDigest d{};
  unsigned int len = 0;
  EVP_Digest(token.data(), token.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

bool ValidToken(absl::string_view token) {
  if (token.empty() || token.size() > 4096) return false;
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::StatusOr<absl::string_view> BearerTokenOf(std::optional<absl::string_view> authorization) {
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "missing authorization metadata: this server requires \"authorization: Bearer <token>\"");
  }
  absl::string_view value = *authorization;
  constexpr absl::string_view kScheme = "bearer ";
  absl::string_view token;
  if (value.size() > kScheme.size() && absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    token = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  }
  if (token.empty()) {
    return absl::UnauthenticatedError("malformed authorization metadata: expected \"Bearer <token>\"");
  }
  return token;
}

int MatchDigest(const TokenDigest& presented, const std::vector<TokenDigest>& known) {
  // No early exit: every digest is compared, and the index is selected without a branch.
  int match = -1;
  for (size_t i = 0; i < known.size(); ++i) {
    const int same = CRYPTO_memcmp(presented.data(), known[i].data(), presented.size()) == 0;
    match = same * static_cast<int>(i) + (1 - same) * match;
  }
  return match;
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
  std::vector<TokenDigest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    // RFC 6750 tokens are printable ASCII without spaces; anything else would never match what a
    // client can send.
    if (!ValidToken(line)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth tokens file ", source, " line ", line_number,
          ": a token must be printable ASCII without whitespace (one token per line)"));
    }
    digests.push_back(DigestOfToken(line));
  }
  if (digests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "auth tokens file ", source,
        " has no token (one per line; blank lines and lines starting with # are ignored)"));
  }
  return std::unique_ptr<BearerTokenAuth>(new BearerTokenAuth(std::move(digests)));
}

}  // namespace loraserve::server
