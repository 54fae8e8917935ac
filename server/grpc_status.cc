#include "server/grpc_status.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace loraserve::server {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Characters after which a '/' starts an absolute path rather than being part of a word.
bool StartsToken(char prev) {
  return IsSpace(prev) || prev == '"' || prev == '\'' || prev == '(' || prev == '[' || prev == '=' ||
         prev == ',' || prev == '`' || prev == '<';
}

// Characters that end a path token.
bool EndsPath(char c) {
  return IsSpace(c) || c == '"' || c == '\'' || c == ')' || c == ']' || c == ',' || c == ':' ||
         c == '`' || c == '>' || c == ';';
}

// Drops the text from the first LibTorch trace marker on.
absl::string_view CutTrace(absl::string_view m) {
  for (absl::string_view marker : {"Exception raised from", "frame #0"}) {
    size_t pos = m.find(marker);
    if (pos != absl::string_view::npos) m = m.substr(0, pos);
  }
  return m;
}

std::string ReplaceAliases(absl::string_view in, std::vector<PathAlias> aliases) {
  std::sort(aliases.begin(), aliases.end(), [](const PathAlias& a, const PathAlias& b) {
    return a.prefix.size() > b.prefix.size();
  });
  std::string out;
  size_t i = 0;
  while (i < in.size()) {
    bool replaced = false;
    for (const PathAlias& a : aliases) {
      if (a.prefix.empty() || in.compare(i, a.prefix.size(), a.prefix) != 0) continue;
      // Only whole path components: "/srv/a" must not match inside "/srv/ab".
      const size_t end = i + a.prefix.size();
      if (end < in.size() && in[end] != '/' && !EndsPath(in[end])) continue;
      out += a.replacement;
      i = end;
      replaced = true;
      break;
    }
    if (!replaced) out += in[i++];
  }
  return out;
}

std::string ShortenAbsolutePaths(absl::string_view in) {
  std::string out;
  size_t i = 0;
  while (i < in.size()) {
    const bool at_token = in[i] == '/' && (i == 0 || StartsToken(in[i - 1])) && i + 1 < in.size() &&
                          !EndsPath(in[i + 1]);
    if (!at_token) {
      out += in[i++];
      continue;
    }
    size_t end = i;
    while (end < in.size() && !EndsPath(in[end])) ++end;
    absl::string_view path = in.substr(i, end - i);
    while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
    const size_t slash = path.find_last_of('/');
    out += ".../";
    out += std::string(path.substr(slash + 1));
    i = end;
  }
  return out;
}

std::string CollapseWhitespace(absl::string_view in) {
  std::string out;
  bool space = false;
  for (char c : in) {
    if (IsSpace(c)) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

}  // namespace

std::string SanitizeStatusMessage(absl::string_view message, const std::vector<PathAlias>& aliases,
                                  size_t max_bytes) {
  std::string m = CollapseWhitespace(ShortenAbsolutePaths(ReplaceAliases(CutTrace(message), aliases)));
  if (m.size() > max_bytes) {
    size_t cut = max_bytes > 3 ? max_bytes - 3 : 0;
    // Back up to the start of a UTF-8 character.
    while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;
    m = absl::StrCat(m.substr(0, cut), "...");
  }
  return m;
}

grpc::Status ToGrpcStatus(const absl::Status& status, const std::vector<PathAlias>& aliases) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      SanitizeStatusMessage(status.message(), aliases));
}

}  // namespace loraserve::server
