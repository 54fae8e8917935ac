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
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace loraserve::server {

struct HttpOptions {
  int threads = 16;                       // requests served at once (an OpenAI request holds one)
  int max_queue = 64;                     // accepted connections waiting for a thread
  int64_t max_request_bytes = 64 << 10;   // larger bodies get 413 (headers: 8 KiB per line)
  absl::Duration timeout = absl::Seconds(5);  // per read / write; an idle client is cut off
  int keep_alive_max_requests = 100;      // requests per connection before it is closed
  // A non-streaming OpenAI completion still running after this long answers 200 and then sends a
  // space (JSON allows leading whitespace) each period until its body, so that a client that has
  // gone is noticed and its request cancelled; a failure after that comes as OpenAI error JSON.
  absl::Duration completion_heartbeat = absl::Seconds(1);
};

class HttpEndpoint {
 public:
  struct Request {
    std::string method;
    std::string path;
    std::string body;
    std::map<std::string, std::string> headers;  // names lower-cased
    // The header's value ("" when absent).
    std::string header(const std::string& lower_case_name) const;
  };
  // Writes one piece of a streamed body; false once the client has gone (stop then).
  using Writer = std::function<bool(const std::string& piece)>;
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::map<std::string, std::string> headers;
    // When set, the body is streamed (chunked) instead: called once on the serving thread after
    // the headers went out; it writes pieces until done or until a write fails.
    std::function<void(const Writer& write)> stream;
  };
  static Response Reply(int status, std::string body,
                        std::string content_type = "text/plain; charset=utf-8") {
    Response r;
    r.status = status;
    r.body = std::move(body);
    r.content_type = std::move(content_type);
    return r;
  }
  using Handler = std::function<Response()>;
  using RequestHandler = std::function<Response(const Request&)>;

  explicit HttpEndpoint(const HttpOptions& options = HttpOptions());
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Serves GET (and HEAD) `path` with `handler`; other methods on it get 405, unknown paths 404.
  // Before Start() only.
  void Handle(const std::string& path, Handler handler);
  // Serves `method` ("GET" or "POST") `path` with `handler`; other methods on the path get 405.
  // Before Start() only.
  void Route(const std::string& method, const std::string& path, RequestHandler handler);
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
  std::map<std::string, std::map<std::string, RequestHandler>> routes_;  // path -> method -> handler
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_HTTP_ENDPOINT_H_
