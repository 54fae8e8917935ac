// The idle-server Score path in process (issue 13 item 8): a 3-token Score with top_logprobs on
// the built-in model (stories260K), split into its parts, to set against bench/idle_latency.py's
// end-to-end gRPC numbers:
//   BM_ModelScore       Model::Score (the forward alone)
//   BM_LoraScore        LoraModel::Score with no adapter (what the engine's Score task runs)
//   BM_EngineScore      Engine::SubmitScore to its callback (forward + engine hand-offs +
//                       log-softmax/top-k), one at a time on an idle engine
// Threads: 1 (as loraserve --threads=1 in idle_latency.py). Model dir: $LORASERVE_BENCH_MODEL or
// the build's default model.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/engine/engine.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"

namespace loraserve::core {
namespace {

const std::vector<int32_t> kIds = {1, 403, 407};

std::string ModelDir() {
  const char* dir = std::getenv("LORASERVE_BENCH_MODEL");
  return dir != nullptr && *dir != '\0' ? dir : LORASERVE_DEFAULT_MODEL_DIR;
}

Model& TheModel() {
  static Model* model = [] {
    at::set_num_threads(1);
    auto m = Model::Load(ModelDir(), ModelOptions());
    if (!m.ok()) std::abort();
    return m->release();
  }();
  return *model;
}

void BM_ModelScore(benchmark::State& state) {
  c10::InferenceMode guard;
  Model& model = TheModel();
  for (auto _ : state) benchmark::DoNotOptimize(model.Score(kIds));
}
BENCHMARK(BM_ModelScore)->Unit(benchmark::kMicrosecond);

void BM_LoraScore(benchmark::State& state) {
  c10::InferenceMode guard;
  static LoraModel lora(&TheModel());
  for (auto _ : state) benchmark::DoNotOptimize(lora.Score(kIds, nullptr));
}
BENCHMARK(BM_LoraScore)->Unit(benchmark::kMicrosecond);

void BM_EngineScore(benchmark::State& state) {
  static std::unique_ptr<Engine> engine = [] {
    EngineOptions o;
    o.model_dir = ModelDir();
    o.num_threads = 1;
    o.max_wait = absl::Milliseconds(1);
    auto e = Engine::Create(o);
    if (!e.ok()) std::abort();
    return *std::move(e);
  }();
  for (auto _ : state) {
    absl::Notification done;
    ScoreRequest r;
    r.token_ids = kIds;
    r.top_logprobs = 1;
    engine->SubmitScore(r, [&](absl::StatusOr<ScoreResult> s) {
      benchmark::DoNotOptimize(s);
      done.Notify();
    });
    done.WaitForNotification();
  }
}
BENCHMARK(BM_EngineScore)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace loraserve::core

BENCHMARK_MAIN();
