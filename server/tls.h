// TLS for the gRPC port: server credentials from PEM files, checked at start-up so that a bad file
// fails with a message naming it instead of a server that cannot complete a handshake.
// Thread-safe (pure function).
#ifndef LORASERVE_SERVER_TLS_H_
#define LORASERVE_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class ServerCredentials;
}  // namespace grpc

namespace loraserve::server {

struct TlsFiles {
  // PEM certificate chain (leaf first) and its private key; both or neither. Neither = plaintext.
  std::string cert_file;
  std::string key_file;
  // PEM CA certificate(s); when set, clients must present a certificate signed by one of them
  // (mutual TLS). Needs cert_file and key_file.
  std::string client_ca_file;
};

// grpc::InsecureServerCredentials() when no file is given; grpc::SslServerCredentials otherwise.
// InvalidArgument (naming the file) when only one of cert/key is given, a client CA without them,
// a file cannot be read or holds no valid PEM certificate / private key, or the key does not
// belong to the certificate.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const TlsFiles& files);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_TLS_H_
