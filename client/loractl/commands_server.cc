// loractl health, metrics: the server's gRPC health status and its Prometheus
// /metrics.
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/loractl/commands.h"
#include "client/loractl/flags.h"

namespace loraserve::loractl {
namespace {

constexpr int kUnavailable = 14;  // grpc UNAVAILABLE: health not SERVING

int RunHealth(Context& ctx, const std::string& service) {
  auto status = ctx.client().Health(service, ctx.call());
  if (!status.ok()) return ctx.Fail(status.status());
  const char* name = loraserve::ServingStatusName(*status);
  if (ctx.json()) {
    ctx.Emit({{"service", service},
              {"status", name},
              {"serving", *status == loraserve::ServingStatus::kServing}});
  } else {
    std::printf("%s\n", name);
  }
  return *status == loraserve::ServingStatus::kServing ? 0 : kUnavailable;
}

// GET http://address/path within `timeout`; the body of a 200 reply.
// UNAVAILABLE when the server cannot be reached or answers otherwise.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path,
                                    absl::Duration timeout) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError("metrics address must be HOST:PORT");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  httplib::Client client(host, port);
  const auto limit = std::max(absl::ToChronoMicroseconds(timeout), std::chrono::microseconds(1));
  client.set_connection_timeout(limit);
  client.set_read_timeout(limit);
  client.set_write_timeout(limit);
  httplib::Result res = client.Get(path.c_str());
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", address, " (", httplib::to_string(res.error()), ")"));
  }
  if (res->status != 200) {
    return absl::UnavailableError(absl::StrCat("bad reply from http://", address, path, ": HTTP ", res->status));
  }
  return res->body;
}

// One Prometheus text-format sample line ("name{a=\"b\"} 1.5") as JSON; nullopt
// for comments and lines it cannot read.
std::optional<Json> MetricSample(const std::string& line) {
  if (line.empty() || line[0] == '#') return std::nullopt;
  size_t i = line.find_first_of("{ ");
  if (i == std::string::npos) return std::nullopt;
  Json sample = {{"name", line.substr(0, i)}, {"labels", Json::object()}};
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find("=\"", i);
      if (eq == std::string::npos) return std::nullopt;
      const std::string key = line.substr(i, eq - i);
      std::string value;
      for (i = eq + 2; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      sample["labels"][key] = value;
      i += 1;  // closing quote
      if (i < line.size() && line[i] == ',') ++i;
    }
    ++i;  // '}'
  }
  std::vector<std::string> rest =
      absl::StrSplit(line.substr(std::min(i, line.size())), ' ', absl::SkipEmpty());
  if (rest.empty()) return std::nullopt;
  double value;
  if (absl::SimpleAtod(rest[0], &value) && std::isfinite(value)) {
    sample["value"] = value;
  } else {
    sample["value"] = rest[0];  // +Inf, -Inf, NaN
  }
  return sample;
}

struct MetricsArgs {
  std::string prefix;
  std::string metrics_addr = "127.0.0.1:9464";
};

int RunMetrics(Context& ctx, const MetricsArgs& args) {
  auto text = HttpGet(args.metrics_addr, "/metrics", ctx.flags().client.default_deadline);
  if (!text.ok()) return ctx.Fail(text.status());
  Json samples = Json::array();
  for (absl::string_view piece : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    const std::string line(piece);
    if (ctx.json()) {
      std::optional<Json> sample = MetricSample(line);
      if (sample && (*sample)["name"].get<std::string>().rfind(args.prefix, 0) == 0)
        samples.push_back(*sample);
    } else if (line.rfind(args.prefix, 0) == 0) {
      std::printf("%s\n", line.c_str());
    }
  }
  if (ctx.json()) ctx.Emit({{"metrics_addr", args.metrics_addr}, {"samples", samples}});
  return 0;
}

}  // namespace

void AddServerCommands(CLI::App* root, CommandTable* table) {
  auto service = std::make_shared<std::string>();
  CLI::App* health = table->Add(root, "health", "grpc.health.v1 status (exit 14 unless SERVING)",
                                "", [service](Context& ctx) { return RunHealth(ctx, *service); });
  health->add_option("SERVICE", *service, "the service to ask about (default: the server)");

  auto args = std::make_shared<MetricsArgs>();
  CLI::App* metrics = table->Add(
      root, "metrics", "Prometheus /metrics (names starting with PREFIX)",
      "Plain HTTP to the server's --metrics_listen. With --json:\n"
      "{\"samples\": [{\"name\", \"labels\", \"value\"}]}.",
      [args](Context& ctx) { return RunMetrics(ctx, *args); },
      /*needs_client=*/false);
  metrics->add_option("PREFIX", args->prefix, "only the samples whose names start with PREFIX");
  AddString(metrics,
            {"metrics_addr", "HOST:PORT",
             "the server's --metrics_listen (env LORASERVE_METRICS_ADDR; "
             "default 127.0.0.1:9464)"},
            &args->metrics_addr)
      ->envname("LORASERVE_METRICS_ADDR");
}

}  // namespace loraserve::loractl
