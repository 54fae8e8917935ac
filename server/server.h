// The loraserve gRPC server: owns the grpc::Server, its services and the health state.
// Thread-safe: SetServing and Shutdown may be called from any thread (e.g. a signal watcher).
#ifndef LORASERVE_SERVER_SERVER_H_
#define LORASERVE_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace loraserve::server {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see Server::port()).
  std::string listen_address = "127.0.0.1:50051";
};

class Server {
 public:
  // Binds and starts serving. Health starts NOT_SERVING; call SetServing(true) once ready.
  // InvalidArgument if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  // grpc.health.v1 status of the server as a whole ("" service).
  void SetServing(bool serving);
  // Health goes NOT_SERVING, then in-flight calls get up to `grace` to finish.
  void Shutdown(absl::Duration grace);
  // Blocks until Shutdown has completed.
  void Wait();

 private:
  Server() = default;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_SERVER_H_
