// A minimal HTTP/1.x server for GET endpoints such as /metrics: one thread, one connection at a
// time, `Connection: close`. It exists because prometheus-cpp's Exposer cannot run in this process:
// Debian's civetweb creates its threads with a fixed 100 KiB stack, which is smaller than the
// static TLS that LibTorch + OpenBLAS + glog need, so pthread_create fails with EINVAL.
//
// Thread-safe: handlers run on the endpoint's thread; Start/Stop from any thread.
#ifndef LORASERVE_SERVER_HTTP_ENDPOINT_H_
#define LORASERVE_SERVER_HTTP_ENDPOINT_H_

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace loraserve::server {

class HttpEndpoint {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  HttpEndpoint() = default;
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Serves GET `path` with `handler`. Before Start() only.
  void Handle(const std::string& path, Handler handler);
  // Binds "host:port" (IPv4 address or "localhost"; port 0 = any free port) and starts serving.
  // InvalidArgument if the address is malformed or cannot be bound.
  absl::Status Start(const std::string& listen);
  // The bound port (0 before Start).
  int port() const { return port_; }
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  void Serve();
  void ServeConnection(int fd);

  std::map<std::string, Handler> handlers_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_HTTP_ENDPOINT_H_
