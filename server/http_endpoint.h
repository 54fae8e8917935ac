// The server's plain-HTTP port (/metrics, /healthz, /readyz; the OpenAI-compatible API later) on
// cpp-httplib. Requests are served by a fixed pool of threads with a bounded queue of accepted
// connections: when every thread is busy and the queue is full, new connections wait in the
// kernel's listen backlog (they are accepted as slots free up) instead of growing memory or
// threads. Each read and write of a request is limited by `timeout`, so a client that stops
// sending is disconnected and frees its thread; requests (headers + body) over
// `max_request_bytes` are refused with 413.
//
// (prometheus-cpp's own Exposer cannot run in this process: Debian's civetweb creates its threads
// with a fixed 100 KiB stack, smaller than the static TLS that LibTorch + OpenBLAS need.)
//
// Thread-safe: handlers run on the pool's threads, concurrently; Start/Stop from any thread.
#ifndef LORASERVE_SERVER_HTTP_ENDPOINT_H_
#define LORASERVE_SERVER_HTTP_ENDPOINT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace loraserve::server {

struct HttpOptions {
  int threads = 4;                        // requests served at once
  int max_queue = 64;                     // accepted connections waiting for a thread
  int64_t max_request_bytes = 64 << 10;   // larger bodies get 413 (headers: 8 KiB per line)
  absl::Duration timeout = absl::Seconds(5);  // per read / write; an idle client is cut off
  int keep_alive_max_requests = 100;      // requests per connection before it is closed
};

class HttpEndpoint {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  explicit HttpEndpoint(const HttpOptions& options = HttpOptions());
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Serves GET (and HEAD) `path` with `handler`; other methods on it get 405, unknown paths 404.
  // Before Start() only.
  void Handle(const std::string& path, Handler handler);
  // Binds "host:port" (port 0 = any free port) and starts serving. InvalidArgument if the address
  // is malformed or cannot be bound, or an option is out of range; FailedPrecondition if started.
  absl::Status Start(const std::string& listen);
  // The bound port (0 before Start).
  int port() const { return port_; }
  // Stops accepting, lets requests being served finish, joins every thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  const HttpOptions options_;
  std::map<std::string, Handler> handlers_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_HTTP_ENDPOINT_H_
