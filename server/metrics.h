// Prometheus metrics of the server (prometheus-cpp); the server serves Render() at /metrics on its
// HTTP port (server/http_endpoint.h).
//
// Counters and histograms are recorded by the services and the engine's step observer; engine
// gauges (queue depth, KV cache, adapters by state, resident bytes, evictions) are read from the
// engine at scrape time. Per-adapter label values are capped: the first `max_adapter_labels`
// distinct adapter names get their own series, later ones share the value "other"; the base model
// is "__base__".
//
// Thread-safe.
#ifndef LORASERVE_SERVER_METRICS_H_
#define LORASERVE_SERVER_METRICS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace loraserve::core {
class Engine;
struct RequestStats;
}  // namespace loraserve::core

namespace loraserve::server {

struct MetricsOptions {
  // Distinct adapter label values before overflowing to "other".
  int max_adapter_labels = 32;
  // Distinct tenant label values before overflowing to "other".
  int max_tenant_labels = 64;
};

class Metrics {
 public:
  explicit Metrics(const MetricsOptions& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Engine gauges are read from `engine` at each scrape from now on. `loading_adapters` reports how
  // many adapters are being loaded (they are not in the engine yet).
  void AttachEngine(std::shared_ptr<core::Engine> engine, std::function<int()> loading_adapters);

  // One finished RPC: `rpc` is the method name (e.g. "Generate"), `code` its final status.
  void RecordRpc(absl::string_view rpc, absl::StatusCode code, absl::Duration latency);
  // A finished generation with `adapter` ("" = base).
  void RecordGeneration(absl::string_view adapter, const core::RequestStats& stats);
  // A finished Score of `tokens` prompt tokens.
  void RecordScore(absl::string_view adapter, int64_t tokens);
  // One engine step (from Engine::SetStepObserver).
  void RecordStep(int batch_size, int distinct_adapters, int new_tokens, absl::Duration step_time);
  void RecordAdapterLoad(absl::Duration duration);
  // op: "merge" or "unmerge".
  void RecordAdapterMerge(absl::string_view op, absl::Duration duration);

  // How long a caller refused for a full queue should wait before retrying: the recent mean step
  // time times the number of steps the queue ahead needs, within [10 ms, 5 s].
  absl::Duration RetryAfterHint() const;

  // Per tenant: one finished call of an authenticated caller, by final code.
  void RecordTenantRequest(absl::string_view tenant, absl::StatusCode code);
  // Per tenant: an inference request's tokens, and (Generate) its time in the engine's queue.
  void RecordTenantTokens(absl::string_view tenant, int64_t prompt_tokens, int64_t generated_tokens,
                          std::optional<absl::Duration> queue_time);

  // The label value for `adapter` under the cardinality cap.
  std::string AdapterLabel(absl::string_view adapter);

  // The text exposition format of every metric (what /metrics serves).
  std::string Render() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_METRICS_H_
