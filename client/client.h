// loraserve::Client: the C++ client library for a loraserve server. Hides channels and stubs;
// every call returns absl::Status / absl::StatusOr with plain structs.
// Thread-safe: one Client may be shared by many threads.
#ifndef LORASERVE_CLIENT_CLIENT_H_
#define LORASERVE_CLIENT_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace loraserve {

struct ClientOptions {
  // host:port of the server.
  std::string address = "127.0.0.1:50051";
  // Deadline applied to each unary call that does not specify its own.
  absl::Duration default_deadline = absl::Seconds(30);
};

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
const char* ServingStatusName(ServingStatus status);

class Client {
 public:
  // Creates a client; the connection is made lazily on the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();

  // grpc.health.v1 Check for `service` ("" = the whole server). UNAVAILABLE if unreachable.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loraserve

#endif  // LORASERVE_CLIENT_CLIENT_H_
