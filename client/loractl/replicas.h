// `loractl --all`: the replicas an --addr names. A Kubernetes headless Service
// resolves to one address per ready pod, so management calls (load, upload,
// merge, delete) reach every replica by resolving its name and calling each
// address in turn.
#ifndef CLIENT_LORACTL_REPLICAS_H_
#define CLIENT_LORACTL_REPLICAS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace loraserve::loractl {

struct Replicas {
  // The DNS name the addresses came from, which their TLS certificates carry ("" for an IP
  // literal and for an ipv4:/ipv6: list).
  std::string host;
  std::vector<std::string> addresses;  // "IP:PORT" / "[IPv6]:PORT", sorted, distinct
};

// The addresses of `target`: HOST:PORT (or dns:///HOST:PORT) → every address
// HOST resolves to (getaddrinfo, IPv4 and IPv6), each with PORT; gRPC's
// ipv4:A:P,B:P and ipv6:[A]:P,[B]:P lists → their entries. InvalidArgument for a
// malformed target, NotFound when the name does not resolve or has no address.
absl::StatusOr<Replicas> ResolveReplicas(const std::string& target);

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_REPLICAS_H_
