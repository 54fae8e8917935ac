// The one server file that includes cpp-httplib.
#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace loraserve::server {
namespace {

// A fixed number of threads with a bounded queue, behind httplib's TaskQueue (see PoolRef). A full queue blocks the
// accepting thread (backpressure into the listen backlog) rather than dropping the connection:
// httplib 0.11 gives the queue no way to close a connection it refuses. Once Close() has been
// called (shutting down), connections still being handed over are served on the caller's thread.
class BoundedPool {
 public:
  BoundedPool(int threads, int max_queue) : max_queue_(static_cast<size_t>(max_queue)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~BoundedPool() { Shutdown(); }

  void Enqueue(std::function<void()> fn) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return closing_ || queue_.size() < max_queue_; });
    if (closing_) {
      lock.unlock();
      fn();
      return;
    }
    queue_.push_back(std::move(fn));
    not_empty_.notify_one();
  }

  // Runs what is queued, then joins the threads. Idempotent.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = closing_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // Unblocks a waiting enqueue (Stop() before httplib's accept loop can exit).
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    not_full_.notify_all();
  }

 private:
  void Work() {
    while (true) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        not_empty_.wait(lock, [&] { return stopped_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      not_full_.notify_one();
      fn();
    }
  }

  const size_t max_queue_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::function<void()>> queue_;
  bool closing_ = false;
  bool stopped_ = false;
  std::vector<std::thread> threads_;
};

// What httplib's accept loop owns: a handle on the endpoint's pool, which outlives the loop.
class PoolRef : public httplib::TaskQueue {
 public:
  explicit PoolRef(std::shared_ptr<BoundedPool> pool) : pool_(std::move(pool)) {}
  void enqueue(std::function<void()> fn) override { pool_->Enqueue(std::move(fn)); }
  void shutdown() override { pool_->Shutdown(); }

 private:
  std::shared_ptr<BoundedPool> pool_;
};

const char* Reason(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 503: return "Service Unavailable";
    default: return status >= 500 ? "Server Error" : "Error";
  }
}

}  // namespace

struct HttpEndpoint::Impl {
  httplib::Server server;
  std::shared_ptr<BoundedPool> pool;  // set by Start
  std::thread thread;                 // httplib's accept loop
  std::atomic<bool> loop_ended{false};
  std::mutex mu;
  bool stopped = false;  // guarded by mu
};

HttpEndpoint::HttpEndpoint(const HttpOptions& options) : options_(options), impl_(std::make_unique<Impl>()) {}

HttpEndpoint::~HttpEndpoint() { Stop(); }

void HttpEndpoint::Handle(const std::string& path, Handler handler) {
  Route("GET", path, [handler = std::move(handler)](const Request&) { return handler(); });
}

void HttpEndpoint::Route(const std::string& method, const std::string& path, RequestHandler handler) {
  routes_[path][method] = std::move(handler);
}

std::string HttpEndpoint::Request::header(const std::string& lower_case_name) const {
  auto it = headers.find(lower_case_name);
  return it == headers.end() ? std::string() : it->second;
}

absl::Status HttpEndpoint::Start(const std::string& listen) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->pool != nullptr || impl_->stopped) return absl::FailedPreconditionError("HTTP endpoint already started");
  }
  if (options_.threads < 1 || options_.max_queue < 1 || options_.max_request_bytes < 1 ||
      options_.timeout <= absl::ZeroDuration() || options_.keep_alive_max_requests < 1) {
    return absl::InvalidArgumentError(
        "HTTP options out of range: threads, queue, request bytes, timeout and keep-alive requests must be positive");
  }
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", listen, "\" is not host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  if (host == "localhost") host = "127.0.0.1";
  in_addr parsed{};
  if (::inet_pton(AF_INET, host.c_str(), &parsed) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("\"", host, "\" is not an IPv4 address"));
  }

  httplib::Server& s = impl_->server;
  // httplib's default also sets SO_REUSEPORT, which would let a second server share the port.
  s.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  std::shared_ptr<BoundedPool> pool = std::make_shared<BoundedPool>(options_.threads, options_.max_queue);
  s.new_task_queue = [pool]() -> httplib::TaskQueue* { return new PoolRef(pool); };
  s.set_payload_max_length(static_cast<size_t>(options_.max_request_bytes));
  s.set_read_timeout(absl::ToChronoMicroseconds(options_.timeout));
  s.set_write_timeout(absl::ToChronoMicroseconds(options_.timeout));
  s.set_keep_alive_timeout(std::max<time_t>(1, static_cast<time_t>(absl::ToInt64Seconds(options_.timeout))));
  s.set_keep_alive_max_count(static_cast<size_t>(options_.keep_alive_max_requests));
  for (const auto& [path, methods] : routes_) {
    std::string allow;
    for (const auto& [method, unused] : methods) absl::StrAppend(&allow, allow.empty() ? "" : ", ", method);
    if (methods.count("GET") != 0) absl::StrAppend(&allow, ", HEAD");
    auto serve = [](const RequestHandler& handler, const httplib::Request& req, httplib::Response& res) {
      Request r{req.method, req.path, req.body, {}};
      for (const auto& [name, value] : req.headers) r.headers[absl::AsciiStrToLower(name)] = value;
      Response out = handler(r);
      res.status = out.status;
      for (const auto& [name, value] : out.headers) res.set_header(name.c_str(), value);
      if (!out.stream) {
        res.set_content(out.body, out.content_type.c_str());
        return;
      }
      res.set_chunked_content_provider(
          out.content_type, [stream = std::move(out.stream)](size_t, httplib::DataSink& sink) {
            stream([&sink](const std::string& piece) {
              return sink.is_writable() && sink.write(piece.data(), piece.size());
            });
            sink.done();
            return true;
          });
    };
    for (const auto& [method, handler] : methods) {
      auto h = [serve, handler = handler](const httplib::Request& req, httplib::Response& res) { serve(handler, req, res); };
      if (method == "GET") {
        s.Get(path, h);
      } else if (method == "POST") {
        s.Post(path, h);
      }
    }
    auto not_allowed = [allow](const httplib::Request& req, httplib::Response& res) {
      res.status = 405;
      res.set_header("Allow", allow);
      res.set_content(absl::StrCat(req.method, " not allowed: only ", allow, "\n"), "text/plain; charset=utf-8");
    };
    if (methods.count("GET") == 0) s.Get(path, not_allowed);
    if (methods.count("POST") == 0) s.Post(path, not_allowed);
    s.Put(path, not_allowed);
    s.Delete(path, not_allowed);
    s.Patch(path, not_allowed);
    s.Options(path, not_allowed);
  }
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      res.set_content(absl::StrCat(res.status, " ", Reason(res.status), "\n"),
                      "text/plain; charset=utf-8");
    }
  });

  const int bound = port == 0 ? s.bind_to_any_port(host) : (s.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", listen, ": ", std::strerror(errno)));
  }
  port_ = bound;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->pool = std::move(pool);
  }
  Impl* impl = impl_.get();
  impl_->thread = std::thread([impl] {
    impl->server.listen_after_bind();
    impl->loop_ended = true;
  });
  // httplib's stop() does nothing until the loop runs: wait for it so Stop() cannot be lost.
  while (!impl_->server.is_running() && !impl_->loop_ended) std::this_thread::sleep_for(std::chrono::microseconds(100));
  return absl::OkStatus();
}

void HttpEndpoint::Stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
    if (impl_->pool == nullptr) return;  // never started
    impl_->pool->Close();
  }
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->pool->Shutdown();
}

}  // namespace loraserve::server
