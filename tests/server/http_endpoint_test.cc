// The HTTP port on cpp-httplib (server/http_endpoint.h): routing, methods, limits, the bounded
// pool, idle clients, shutdown. The server's /metrics, /healthz and /readyz are tested in
// server_lifecycle_test.cc.
#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::server {
namespace {

using ::loraserve::testing::HttpGet;
using ::loraserve::testing::HttpRequest;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

HttpEndpoint::Response Text(std::string body) { return HttpEndpoint::Reply(200, std::move(body), "text/plain"); }

// A raw TCP connection to 127.0.0.1:`port` (-1 on failure).
int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether the server closes `fd` within `within` (reads and drops anything it sends first).
bool ClosedWithin(int fd, absl::Duration within) {
  const absl::Time end = absl::Now() + within;
  char buf[4096];
  while (absl::Now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return true;
  }
  return false;
}

TEST(HttpEndpointTest, ServesHandlersAnd404) {
  HttpEndpoint http;
  http.Handle("/metrics", [] { return Text("up 1\n"); });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  ASSERT_GT(http.port(), 0);
  ASSERT_OK_AND_ASSIGN(std::string body, HttpGet(http.port(), "/metrics"));
  EXPECT_EQ(body, "up 1\n");
  ASSERT_OK_AND_ASSIGN(auto missing, HttpRequest(http.port(), "GET", "/other"));
  EXPECT_EQ(missing.status, 404);
  EXPECT_THAT(missing.body, HasSubstr("404 Not Found"));
  HttpEndpoint second;
  EXPECT_THAT(second.Start(absl::StrCat("127.0.0.1:", http.port())), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(second.Start("nonsense"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(second.Start("300.1.1.1:0"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("IPv4")));
  EXPECT_THAT(http.Start("127.0.0.1:0"), StatusIs(absl::StatusCode::kFailedPrecondition));
  http.Stop();
  http.Stop();  // idempotent
  EXPECT_FALSE(HttpGet(http.port(), "/metrics").ok());
}

TEST(HttpEndpointTest, HandlerStatusAndContentTypeGoOut) {
  HttpEndpoint http;
  http.Handle("/readyz", [] { return HttpEndpoint::Reply(503, "not ready\n"); });
  ASSERT_OK(http.Start("localhost:0"));
  ASSERT_OK_AND_ASSIGN(auto r, HttpRequest(http.port(), "GET", "/readyz"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "not ready\n");
  EXPECT_EQ(r.headers["Content-Type"], "text/plain; charset=utf-8");
  EXPECT_THAT(HttpGet(http.port(), "/readyz"), StatusIs(absl::StatusCode::kInternal, HasSubstr("503")));
}

TEST(HttpEndpointTest, OnlyGetAndHeadAreAllowed) {
  HttpEndpoint http;
  http.Handle("/metrics", [] { return Text("up 1\n"); });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  for (const char* method : {"POST", "DELETE"}) {
    ASSERT_OK_AND_ASSIGN(auto r, HttpRequest(http.port(), method, "/metrics", "x"));
    EXPECT_EQ(r.status, 405) << method;
    EXPECT_EQ(r.headers["Allow"], "GET, HEAD") << method;
  }
  ASSERT_OK_AND_ASSIGN(auto head, HttpRequest(http.port(), "HEAD", "/metrics"));
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
}

TEST(HttpEndpointTest, OversizeRequestsAreRefused) {
  HttpOptions o;
  o.max_request_bytes = 1024;
  HttpEndpoint http(o);
  http.Handle("/metrics", [] { return Text("up 1\n"); });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  ASSERT_OK_AND_ASSIGN(auto big, HttpRequest(http.port(), "POST", "/metrics", std::string(4096, 'x')));
  EXPECT_EQ(big.status, 413);
  ASSERT_OK_AND_ASSIGN(auto small, HttpRequest(http.port(), "POST", "/metrics", std::string(100, 'x')));
  EXPECT_EQ(small.status, 405);  // within the limit: routed
  ASSERT_OK_AND_ASSIGN(auto long_uri, HttpRequest(http.port(), "GET", "/" + std::string(10000, 'a')));
  EXPECT_EQ(long_uri.status, 414);
}

TEST(HttpEndpointTest, RejectsOptionsOutOfRange) {
  HttpOptions o;
  o.threads = 0;
  HttpEndpoint a(o);
  EXPECT_THAT(a.Start("127.0.0.1:0"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive")));
  o = HttpOptions();
  o.timeout = absl::ZeroDuration();
  HttpEndpoint b(o);
  EXPECT_THAT(b.Start("127.0.0.1:0"), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A client that connects and never finishes its request is cut off after the timeout, and with
// a single thread the endpoint serves others again afterwards.
TEST(HttpEndpointTest, IdleClientsAreCutOffByTheTimeout) {
  HttpOptions o;
  o.threads = 1;
  o.timeout = absl::Milliseconds(300);
  HttpEndpoint http(o);
  http.Handle("/metrics", [] { return Text("up 1\n"); });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  const int slow = Connect(http.port());
  ASSERT_GE(slow, 0);
  const std::string partial = "GET /metrics HTTP/1.1\r\nHost: x\r\n";  // no blank line: never ends
  ASSERT_EQ(::send(slow, partial.data(), partial.size(), 0), static_cast<ssize_t>(partial.size()));
  const absl::Time t0 = absl::Now();
  // The only thread is busy with `slow` until the timeout; this request is served after it.
  auto other = std::async(std::launch::async, [&] { return HttpGet(http.port(), "/metrics"); });
  EXPECT_TRUE(ClosedWithin(slow, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  ::close(slow);
  ASSERT_EQ(other.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto body = other.get();
  ASSERT_OK(body.status());
  EXPECT_EQ(*body, "up 1\n");
  // A connection that sends nothing at all is cut off too.
  const int silent = Connect(http.port());
  ASSERT_GE(silent, 0);
  EXPECT_TRUE(ClosedWithin(silent, absl::Seconds(5)));
  ::close(silent);
}

// Never more handlers at once than threads; clients beyond threads + queue wait, none fails.
TEST(HttpEndpointTest, ThreadPoolIsBoundedAndClientsBeyondItWait) {
  HttpOptions o;
  o.threads = 2;
  o.max_queue = 1;
  HttpEndpoint http(o);
  std::atomic<int> active{0}, peak{0};
  http.Handle("/slow", [&] {
    const int now = ++active;
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    absl::SleepFor(absl::Milliseconds(50));
    --active;
    return Text("done\n");
  });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  std::vector<std::future<absl::StatusOr<std::string>>> calls;
  for (int i = 0; i < 10; ++i) {
    calls.push_back(std::async(std::launch::async, [&] { return HttpGet(http.port(), "/slow"); }));
  }
  for (auto& c : calls) {
    auto r = c.get();
    ASSERT_OK(r.status());
    EXPECT_EQ(*r, "done\n");
  }
  EXPECT_EQ(peak.load(), 2);
}

// Stop() lets a request being served finish and returns; nothing is served afterwards.
TEST(HttpEndpointTest, StopWaitsForTheRequestInFlight) {
  HttpEndpoint http;
  std::atomic<bool> entered{false};
  http.Handle("/slow", [&] {
    entered = true;
    absl::SleepFor(absl::Milliseconds(300));
    return Text("late\n");
  });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  auto call = std::async(std::launch::async, [&] { return HttpGet(http.port(), "/slow"); });
  while (!entered) absl::SleepFor(absl::Milliseconds(5));
  http.Stop();
  auto r = call.get();
  ASSERT_OK(r.status());
  EXPECT_EQ(*r, "late\n");
  EXPECT_LT(Connect(http.port()), 0);
}

TEST(HttpEndpointTest, PostRoutesSeeTheRequest) {
  HttpEndpoint http;
  http.Route("POST", "/echo", [](const HttpEndpoint::Request& r) {
    return HttpEndpoint::Reply(201, absl::StrCat(r.method, " ", r.path, " ", r.body, " ", r.header("x-test")));
  });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  ASSERT_OK_AND_ASSIGN(auto r, HttpRequest(http.port(), "POST", "/echo", "hello"));
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "POST /echo hello ");
  ASSERT_OK_AND_ASSIGN(auto get, HttpRequest(http.port(), "GET", "/echo"));
  EXPECT_EQ(get.status, 405);
  EXPECT_EQ(get.headers["Allow"], "POST");
}

// A streamed body goes out piece by piece; when the client goes away, a write fails and the
// handler stops.
TEST(HttpEndpointTest, StreamsAndNoticesAClientThatLeft) {
  HttpEndpoint http;
  std::atomic<bool> write_failed{false};
  std::atomic<int> written{0};
  http.Handle("/stream", [&] {
    HttpEndpoint::Response r = HttpEndpoint::Reply(200, "", "text/event-stream");
    r.stream = [&](const HttpEndpoint::Writer& write) {
      for (int i = 0; i < 100000; ++i) {
        if (!write(absl::StrCat("data: ", i, "\n\n"))) {
          write_failed = true;
          return;
        }
        ++written;
        absl::SleepFor(absl::Milliseconds(1));
      }
    };
    return r;
  });
  ASSERT_OK(http.Start("127.0.0.1:0"));
  // A finite stream read whole (small: the handler is stopped by the client closing below).
  const int fd = Connect(http.port());
  ASSERT_GE(fd, 0);
  const std::string req = "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[4096];
  while (got.find("data: 3\n") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(got.find("Transfer-Encoding: chunked"), std::string::npos);
  EXPECT_NE(got.find("data: 0\n"), std::string::npos);
  ::close(fd);
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (!write_failed && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(write_failed);
  EXPECT_LT(written.load(), 100000);
}

TEST(HttpEndpointTest, StopWithoutStartAndRightAfterStart) {
  HttpEndpoint never;
  never.Stop();
  for (int i = 0; i < 20; ++i) {
    HttpEndpoint http;
    http.Handle("/x", [] { return Text("x"); });
    ASSERT_OK(http.Start("127.0.0.1:0"));
    http.Stop();  // must not hang however early it comes
  }
}

}  // namespace
}  // namespace loraserve::server
