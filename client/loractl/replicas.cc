#include "client/loractl/replicas.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace loraserve::loractl {
namespace {

// "host:port" or "[v6]:port" → host and port; false when malformed.
bool SplitHostPort(absl::string_view hp, std::string* host, std::string* port) {
  size_t colon;
  if (absl::StartsWith(hp, "[")) {
    const size_t close = hp.find(']');
    if (close == absl::string_view::npos || close + 1 >= hp.size() || hp[close + 1] != ':') return false;
    *host = std::string(hp.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = hp.rfind(':');
    if (colon == absl::string_view::npos) return false;
    *host = std::string(hp.substr(0, colon));
    if (host->find(':') != std::string::npos) return false;  // bare IPv6 needs brackets
  }
  *port = std::string(hp.substr(colon + 1));
  int p = 0;
  return !host->empty() && absl::SimpleAtoi(*port, &p) && p > 0 && p < 65536;
}

std::string Join(const std::string& ip, bool v6, const std::string& port) {
  return v6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
}

}  // namespace

absl::StatusOr<Replicas> ResolveReplicas(const std::string& target) {
  Replicas out;
  std::set<std::string> seen;
  absl::string_view t = target;
  for (const char* scheme : {"ipv4:", "ipv6:"}) {
    if (!absl::ConsumePrefix(&t, scheme)) continue;
    const bool v6 = scheme[3] == '6';
    for (absl::string_view entry : absl::StrSplit(t, ',')) {
      absl::ConsumePrefix(&entry, "//");  // ipv4://A:P is also accepted by gRPC
      std::string host, port;
      unsigned char buf[sizeof(in6_addr)];
      if (!SplitHostPort(entry, &host, &port) || inet_pton(v6 ? AF_INET6 : AF_INET, host.c_str(), buf) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--addr ", target, ": \"", entry, "\" is not an ", v6 ? "IPv6" : "IPv4", " address with a port"));
      }
      seen.insert(Join(host, v6, port));
    }
    out.addresses.assign(seen.begin(), seen.end());
    return out;
  }
  absl::ConsumePrefix(&t, "dns:///");
  std::string host, port;
  if (!SplitHostPort(t, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("--addr ", target, ": want HOST:PORT"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return absl::NotFoundError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
      seen.insert(Join(ip, false, port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip, sizeof(ip));
      seen.insert(Join(ip, true, port));
    }
  }
  freeaddrinfo(res);
  if (seen.empty()) return absl::NotFoundError(absl::StrCat(host, " has no address"));
  unsigned char buf[sizeof(in6_addr)];
  const bool literal = inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
  if (!literal) out.host = host;
  out.addresses.assign(seen.begin(), seen.end());
  return out;
}

}  // namespace loraserve::loractl
