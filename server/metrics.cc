#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/engine.h"

namespace loraserve::server {
namespace {

constexpr char kBaseLabel[] = "__base__";
constexpr char kOverflowLabel[] = "other";

// Exponential bucket bounds: start, start·factor, ... (count values).
prometheus::Histogram::BucketBoundaries Exponential(double start, double factor, int count) {
  prometheus::Histogram::BucketBoundaries b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

prometheus::ClientMetric GaugeSample(double value,
                                     std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  return m;
}

prometheus::ClientMetric CounterSample(double value) {
  prometheus::ClientMetric m;
  m.counter.value = value;
  return m;
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type,
                                std::vector<prometheus::ClientMetric> samples) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  f.metric = std::move(samples);
  return f;
}

// Engine gauges, read at scrape time.
class EngineCollector : public prometheus::Collectable {
 public:
  void Attach(std::shared_ptr<core::Engine> engine, std::function<int()> loading) {
    absl::MutexLock lock(&mu_);
    engine_ = std::move(engine);
    loading_ = std::move(loading);
  }

  std::shared_ptr<core::Engine> engine() const {
    absl::MutexLock lock(&mu_);
    return engine_;
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::shared_ptr<core::Engine> engine;
    std::function<int()> loading;
    {
      absl::MutexLock lock(&mu_);
      engine = engine_;
      loading = loading_;
    }
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    if (engine == nullptr) {
      out.push_back(Family("loraserve_engine_ready", "1 once the model is loaded and warmed up.",
                           MetricType::Gauge, {GaugeSample(0)}));
      return out;
    }
    const core::EngineStats s = engine->stats();
    out.push_back(Family("loraserve_engine_ready", "1 once the model is loaded and warmed up.",
                         MetricType::Gauge, {GaugeSample(s.ready ? 1 : 0)}));
    out.push_back(Family("loraserve_queue_depth", "Requests waiting to be scheduled.",
                         MetricType::Gauge, {GaugeSample(static_cast<double>(s.queue_depth))}));
    out.push_back(Family("loraserve_running_sequences", "Sequences in the running batch.",
                         MetricType::Gauge, {GaugeSample(static_cast<double>(s.running))}));
    out.push_back(Family("loraserve_kv_cache_used_bytes", "KV-cache bytes reserved by sequences.",
                         MetricType::Gauge,
                         {GaugeSample(static_cast<double>(s.kv_bytes_reserved))}));
    out.push_back(Family("loraserve_kv_cache_budget_bytes", "KV-cache memory budget in bytes.",
                         MetricType::Gauge, {GaugeSample(static_cast<double>(s.kv_budget_bytes))}));
    out.push_back(Family("loraserve_preemptions_total",
                         "Sequences preempted and requeued because the KV cache was full.",
                         MetricType::Counter, {CounterSample(static_cast<double>(s.preemptions))}));
    out.push_back(Family("loraserve_adapter_evictions_total",
                         "Adapters whose weights were dropped to respect the adapter budget.",
                         MetricType::Counter,
                         {CounterSample(static_cast<double>(s.adapter_evictions))}));
    out.push_back(Family("loraserve_adapter_resident_bytes",
                         "Bytes of adapter weights resident in memory.", MetricType::Gauge,
                         {GaugeSample(static_cast<double>(s.adapter_bytes_resident))}));

    out.push_back(Family("loraserve_adapter_loads_total",
                         "Loads of adapters that were not resident (evicted, or registered only) "
                         "because a request or call needed them.",
                         MetricType::Counter, {CounterSample(static_cast<double>(s.adapter_loads))}));
    out.push_back(Family("loraserve_adapter_load_seconds_total", "Time spent in those loads.",
                         MetricType::Counter, {CounterSample(s.adapter_load_seconds)}));
    out.push_back(Family("loraserve_adapter_misses_total",
                         "Requests that found their adapter not resident and waited for its load.",
                         MetricType::Counter, {CounterSample(static_cast<double>(s.adapter_misses))}));
    out.push_back(Family("loraserve_adapter_load_waiting",
                         "Requests waiting for their adapter's load now.", MetricType::Gauge,
                         {GaugeSample(static_cast<double>(s.adapter_load_waiting))}));

    // Adapters by state and residency; every combination present so rates work from zero.
    const core::AdapterCounts& c = s.adapters;
    std::vector<prometheus::ClientMetric> by_state = {
        GaugeSample(static_cast<double>(c.merged), {{"state", "merged"}, {"residency", "resident"}}),
        GaugeSample(0, {{"state", "merged"}, {"residency", "evicted"}}),
        GaugeSample(static_cast<double>(c.evicted), {{"state", "ready"}, {"residency", "evicted"}}),
        GaugeSample(static_cast<double>(c.not_loaded), {{"state", "ready"}, {"residency", "not_loaded"}}),
        GaugeSample(static_cast<double>(c.resident), {{"state", "ready"}, {"residency", "resident"}}),
    };
    by_state.push_back(
        GaugeSample(loading ? loading() : 0, {{"state", "loading"}, {"residency", "none"}}));
    out.push_back(Family("loraserve_adapters", "Adapters by state (loading, ready, merged) and "
                                               "residency (resident, evicted, not_loaded; none "
                                               "while loading).",
                         MetricType::Gauge, std::move(by_state)));
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<core::Engine> engine_ ABSL_GUARDED_BY(mu_);
  std::function<int()> loading_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

struct Metrics::Impl {
  MetricsOptions options;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<EngineCollector> collector = std::make_shared<EngineCollector>();

  prometheus::Family<prometheus::Counter>* requests;
  prometheus::Family<prometheus::Histogram>* request_duration;
  prometheus::Histogram* ttft;
  prometheus::Histogram* per_token;
  prometheus::Histogram* queue_time;
  prometheus::Histogram* batch_size;
  prometheus::Histogram* batch_adapters;
  prometheus::Histogram* step_duration;
  prometheus::Counter* steps;
  prometheus::Counter* multi_adapter_steps;
  prometheus::Family<prometheus::Counter>* prompt_tokens;
  prometheus::Family<prometheus::Counter>* generated_tokens;
  prometheus::Family<prometheus::Counter>* adapter_requests;
  prometheus::Histogram* load_duration;
  prometheus::Family<prometheus::Histogram>* merge_duration;
  prometheus::Family<prometheus::Counter>* tenant_requests;
  prometheus::Family<prometheus::Counter>* tenant_tokens;
  prometheus::Family<prometheus::Histogram>* tenant_queue_time;

  absl::Mutex mu;
  std::set<std::string> adapter_labels ABSL_GUARDED_BY(mu);
  std::set<std::string> tenant_labels ABSL_GUARDED_BY(mu);

  std::string TenantLabel(absl::string_view tenant) {
    const std::string name(tenant);
    absl::MutexLock lock(&mu);
    if (tenant_labels.count(name) > 0) return name;
    if (static_cast<int>(tenant_labels.size()) < options.max_tenant_labels) {
      tenant_labels.insert(name);
      return name;
    }
    return kOverflowLabel;
  }
  double mean_step_seconds ABSL_GUARDED_BY(mu) = 0;  // exponential moving average

  const prometheus::Histogram::BucketBoundaries latency_buckets = Exponential(0.0005, 2, 17);
};

Metrics::Metrics(const MetricsOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  auto& reg = *m.registry;
  m.requests = &prometheus::BuildCounter()
                    .Name("loraserve_requests_total")
                    .Help("Finished RPCs by method and gRPC status code.")
                    .Register(reg);
  m.request_duration = &prometheus::BuildHistogram()
                            .Name("loraserve_request_duration_seconds")
                            .Help("RPC latency from arrival to the final status, by method.")
                            .Register(reg);
  m.ttft = &prometheus::BuildHistogram()
                .Name("loraserve_time_to_first_token_seconds")
                .Help("Generate: arrival to first generated token.")
                .Register(reg)
                .Add({}, m.latency_buckets);
  m.per_token = &prometheus::BuildHistogram()
                     .Name("loraserve_time_per_output_token_seconds")
                     .Help("Generate: mean time between generated tokens after the first.")
                     .Register(reg)
                     .Add({}, Exponential(0.0001, 2, 16));
  m.queue_time = &prometheus::BuildHistogram()
                      .Name("loraserve_queue_time_seconds")
                      .Help("Generate: arrival to first scheduled step.")
                      .Register(reg)
                      .Add({}, m.latency_buckets);
  m.batch_size = &prometheus::BuildHistogram()
                      .Name("loraserve_batch_size")
                      .Help("Sequences per engine step.")
                      .Register(reg)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128,
                                                                        256});
  m.batch_adapters = &prometheus::BuildHistogram()
                          .Name("loraserve_batch_adapters")
                          .Help("Distinct adapters (the base model counts as one) per engine step.")
                          .Register(reg)
                          .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 16,
                                                                            32});
  m.step_duration = &prometheus::BuildHistogram()
                         .Name("loraserve_step_duration_seconds")
                         .Help("Wall time of one engine step.")
                         .Register(reg)
                         .Add({}, Exponential(0.0001, 2, 16));
  m.steps = &prometheus::BuildCounter()
                 .Name("loraserve_engine_steps_total")
                 .Help("Engine steps run.")
                 .Register(reg)
                 .Add({});
  m.multi_adapter_steps = &prometheus::BuildCounter()
                               .Name("loraserve_multi_adapter_steps_total")
                               .Help("Engine steps whose batch mixed more than one adapter.")
                               .Register(reg)
                               .Add({});
  m.prompt_tokens = &prometheus::BuildCounter()
                         .Name("loraserve_prompt_tokens_total")
                         .Help("Tokens in (Generate prompts and Score inputs), by adapter.")
                         .Register(reg);
  m.generated_tokens = &prometheus::BuildCounter()
                            .Name("loraserve_generated_tokens_total")
                            .Help("Tokens out (Generate), by adapter.")
                            .Register(reg);
  m.adapter_requests = &prometheus::BuildCounter()
                            .Name("loraserve_adapter_requests_total")
                            .Help("Finished Generate and Score requests, by adapter.")
                            .Register(reg);
  m.load_duration = &prometheus::BuildHistogram()
                         .Name("loraserve_adapter_load_duration_seconds")
                         .Help("LoadAdapter / UploadAdapter: reading and validating an adapter.")
                         .Register(reg)
                         .Add({}, m.latency_buckets);
  m.merge_duration = &prometheus::BuildHistogram()
                          .Name("loraserve_adapter_merge_duration_seconds")
                          .Help("MergeAdapter / UnmergeAdapter, request to completion, by op.")
                          .Register(reg);
  m.tenant_requests = &prometheus::BuildCounter()
                           .Name("loraserve_tenant_requests_total")
                           .Help("Finished calls of authenticated callers, by tenant and status code.")
                           .Register(reg);
  m.tenant_tokens = &prometheus::BuildCounter()
                         .Name("loraserve_tenant_tokens_total")
                         .Help("Inference tokens by tenant and kind (prompt, generated).")
                         .Register(reg);
  m.tenant_queue_time = &prometheus::BuildHistogram()
                             .Name("loraserve_tenant_queue_time_seconds")
                             .Help("Generate: arrival in the engine to first scheduled step, by tenant.")
                             .Register(reg);
}

Metrics::~Metrics() = default;

void Metrics::AttachEngine(std::shared_ptr<core::Engine> engine,
                           std::function<int()> loading_adapters) {
  impl_->collector->Attach(std::move(engine), std::move(loading_adapters));
}

void Metrics::RecordRpc(absl::string_view rpc, absl::StatusCode code, absl::Duration latency) {
  const std::string method(rpc);
  impl_->requests->Add({{"rpc", method}, {"code", absl::StatusCodeToString(code)}}).Increment();
  impl_->request_duration->Add({{"rpc", method}}, impl_->latency_buckets)
      .Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::RecordGeneration(absl::string_view adapter, const core::RequestStats& stats) {
  const std::string label = AdapterLabel(adapter);
  impl_->adapter_requests->Add({{"adapter", label}}).Increment();
  impl_->prompt_tokens->Add({{"adapter", label}}).Increment(static_cast<double>(stats.prompt_tokens));
  impl_->generated_tokens->Add({{"adapter", label}})
      .Increment(static_cast<double>(stats.completion_tokens));
  if (stats.completion_tokens > 0) {
    impl_->queue_time->Observe(absl::ToDoubleSeconds(stats.queue_time));
    impl_->ttft->Observe(absl::ToDoubleSeconds(stats.time_to_first_token));
  }
  if (stats.completion_tokens > 1) {
    impl_->per_token->Observe(absl::ToDoubleSeconds(stats.total - stats.time_to_first_token) /
                              static_cast<double>(stats.completion_tokens - 1));
  }
}

void Metrics::RecordScore(absl::string_view adapter, int64_t tokens) {
  const std::string label = AdapterLabel(adapter);
  impl_->adapter_requests->Add({{"adapter", label}}).Increment();
  impl_->prompt_tokens->Add({{"adapter", label}}).Increment(static_cast<double>(tokens));
}

void Metrics::RecordStep(int batch_size, int distinct_adapters, int /*new_tokens*/,
                         absl::Duration step_time) {
  impl_->steps->Increment();
  if (distinct_adapters > 1) impl_->multi_adapter_steps->Increment();
  impl_->batch_size->Observe(batch_size);
  impl_->batch_adapters->Observe(distinct_adapters);
  const double seconds = absl::ToDoubleSeconds(step_time);
  impl_->step_duration->Observe(seconds);
  absl::MutexLock lock(&impl_->mu);
  impl_->mean_step_seconds = impl_->mean_step_seconds == 0
                                 ? seconds
                                 : 0.9 * impl_->mean_step_seconds + 0.1 * seconds;
}

void Metrics::RecordAdapterLoad(absl::Duration duration) {
  impl_->load_duration->Observe(absl::ToDoubleSeconds(duration));
}

void Metrics::RecordAdapterMerge(absl::string_view op, absl::Duration duration) {
  impl_->merge_duration->Add({{"op", std::string(op)}}, impl_->latency_buckets)
      .Observe(absl::ToDoubleSeconds(duration));
}

absl::Duration Metrics::RetryAfterHint() const {
  double step;
  {
    absl::MutexLock lock(&impl_->mu);
    step = impl_->mean_step_seconds;
  }
  // Without a measured step yet, assume a slow one.
  if (step <= 0) step = 0.05;
  // The queue ahead drains one batch per step; a generation takes many steps, so ask for the
  // time of a few steps per waiting batch.
  int64_t steps = 4;
  if (std::shared_ptr<core::Engine> engine = impl_->collector->engine()) {
    steps += engine->stats().queue_depth;
  }
  return std::clamp(absl::Seconds(step * static_cast<double>(steps)), absl::Milliseconds(10),
                    absl::Seconds(5));
}

void Metrics::RecordTenantRequest(absl::string_view tenant, absl::StatusCode code) {
  impl_->tenant_requests->Add({{"tenant", impl_->TenantLabel(tenant)}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void Metrics::RecordTenantTokens(absl::string_view tenant, int64_t prompt_tokens, int64_t generated_tokens,
                                 std::optional<absl::Duration> queue_time) {
  const std::string label = impl_->TenantLabel(tenant);
  impl_->tenant_tokens->Add({{"tenant", label}, {"kind", "prompt"}}).Increment(static_cast<double>(prompt_tokens));
  impl_->tenant_tokens->Add({{"tenant", label}, {"kind", "generated"}})
      .Increment(static_cast<double>(generated_tokens));
  if (queue_time.has_value()) {
    impl_->tenant_queue_time->Add({{"tenant", label}}, impl_->latency_buckets)
        .Observe(absl::ToDoubleSeconds(*queue_time));
  }
}

std::string Metrics::AdapterLabel(absl::string_view adapter) {
  if (adapter.empty()) return kBaseLabel;
  const std::string name(adapter);
  absl::MutexLock lock(&impl_->mu);
  if (impl_->adapter_labels.count(name) > 0) return name;
  if (static_cast<int>(impl_->adapter_labels.size()) < impl_->options.max_adapter_labels) {
    impl_->adapter_labels.insert(name);
    return name;
  }
  return kOverflowLabel;
}

std::string Metrics::Render() const {
  std::vector<prometheus::MetricFamily> families = impl_->registry->Collect();
  for (auto& f : impl_->collector->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace loraserve::server
