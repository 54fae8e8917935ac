// Base-model throughput on CPU: prefill and decode tokens/s of the ~220M-parameter `bench` preset
// (built in memory, fp32) at batch 1, 8 and 32, each against plain at::mm on the GEMM shape the
// model's matmuls have at that batch, measured in the same run. Counters:
//   tokens_per_s   new tokens through the model per second
//   model_GFLOPs   the model's matmul work per second (linear layers, attention, lm_head rows)
//   gemm_GFLOPs    at::mm [M, 1024] x [1024, 2816] with M = token rows of one forward
//   vs_gemm        model_GFLOPs / gemm_GFLOPs (1.0 = the model runs at raw GEMM speed)
// BM_Gemm rows show the baseline on its own.
//
// Threads: --threads=N (or $LORASERVE_BENCH_THREADS), default 2, applied with at::set_num_threads.
// The OpenBLAS core in use and $OPENBLAS_CORETYPE are printed in the context header.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/model/model.h"
#include "core/model/model_maker.h"

namespace loraserve::core {
namespace {

constexpr int64_t kPromptTokens = 128;

// The bench model; `fused` = ModelOptions::fused_decode_attention (each variant built once).
const Model& BenchModel(bool fused = true) {
  static const Model* models[2] = {nullptr, nullptr};
  const Model*& model = models[fused ? 1 : 0];
  if (model != nullptr) return *model;
  model = [fused] {
    ModelMakerOptions options;
    options.preset = ModelPreset::kBench;
    auto made = MakeDemoModel(options);
    if (!made.ok()) {
      std::fprintf(stderr, "model_bench: %s\n", made.status().ToString().c_str());
      std::exit(1);
    }
    ModelOptions model_options;
    model_options.fused_decode_attention = fused;
    auto m = Model::FromTensors(made->config, made->tensors, model_options, "bench");
    if (!m.ok()) {
      std::fprintf(stderr, "model_bench: %s\n", m.status().ToString().c_str());
      std::exit(1);
    }
    // Warm up the thread pool and the allocator so the first timed iteration is not an outlier.
    KvCache cache((*m)->config(), (*m)->options());
    (void)cache.AddSequence(0);
    SequenceInput warm{0, std::vector<int32_t>(64, 5)};
    (void)(*m)->Forward(absl::MakeConstSpan(&warm, 1), &cache, LogitsMode::kLast);
    return m->release();
  }();
  return *model;
}

// Multiply-add work of one forward, counted as 2 FLOPs per multiply-add, for `rows` new token rows
// attending to `context` positions on average (full, unmasked score matrices, as the model
// computes them), with `heads` logits rows.
double ForwardFlops(const ModelConfig& c, double rows, double attended, double head_rows) {
  const double h = static_cast<double>(c.hidden_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double linear = h * q + 2 * h * kv + q * h + 3 * h * static_cast<double>(c.intermediate_size);
  const double attention = 2 * attended * q;  // q.k and p.v per row
  return 2 * (static_cast<double>(c.num_hidden_layers) * rows * (linear + attention) +
              head_rows * h * static_cast<double>(c.vocab_size));
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// GFLOP/s of at::mm for [rows, hidden] x [hidden, intermediate] (the MLP up-projection shape,
// weight stored [out, in] and used transposed, as at::linear does), measured once per row count.
double GemmGflops(int64_t rows) {
  static std::map<int64_t, double> cache;
  auto it = cache.find(rows);
  if (it != cache.end()) return it->second;
  c10::InferenceMode guard;
  const ModelConfig& c = BenchModel().config();
  at::Tensor x = at::randn({rows, c.hidden_size});
  at::Tensor w = at::randn({c.intermediate_size, c.hidden_size});
  at::Tensor y = at::mm(x, w.t());  // warm-up
  const double flops = 2.0 * rows * c.hidden_size * c.intermediate_size;
  int64_t reps = 0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0;
  while (seconds < 0.3 || reps < 3) {
    y = at::mm(x, w.t());
    ++reps;
    seconds = Since(start);
  }
  benchmark::DoNotOptimize(y.data_ptr());
  return cache[rows] = flops * static_cast<double>(reps) / seconds / 1e9;
}

std::vector<int32_t> PromptTokens(int64_t seq) {
  std::vector<int32_t> ids(kPromptTokens);
  for (int64_t i = 0; i < kPromptTokens; ++i) ids[i] = static_cast<int32_t>(3 + (seq * 977 + i * 131) % 31000);
  ids[0] = 1;
  return ids;
}

// `seconds`: the time spent in Forward over all iterations (timed here as well, so the ratio is
// available to every reporter).
void SetCounters(benchmark::State& state, double tokens, double flops, int64_t gemm_rows,
                 double seconds) {
  const double gemm = GemmGflops(gemm_rows);
  const double model_gflops = flops * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["tokens_per_s"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["model_GFLOPs"] = model_gflops;
  state.counters["gemm_GFLOPs"] = gemm;
  state.counters["vs_gemm"] = model_gflops / gemm;
}

// Prefill: `batch` sequences of kPromptTokens tokens in one packed forward (kLast logits).
void BM_Prefill(benchmark::State& state) {
  const Model& model = BenchModel();
  const int64_t batch = state.range(0);
  std::vector<SequenceInput> inputs;
  for (int64_t s = 0; s < batch; ++s) inputs.push_back({s, PromptTokens(s)});
  double seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    KvCache cache(model.config(), model.options());
    for (int64_t s = 0; s < batch; ++s) (void)cache.AddSequence(s);
    state.ResumeTiming();
    const auto start = std::chrono::steady_clock::now();
    auto logits = model.Forward(inputs, &cache, LogitsMode::kLast);
    seconds += Since(start);
    if (!logits.ok()) {
      state.SkipWithError(logits.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(logits->data_ptr());
  }
  const double rows = static_cast<double>(batch * kPromptTokens);
  SetCounters(state, rows, ForwardFlops(model.config(), rows, kPromptTokens, batch),
              batch * kPromptTokens, seconds);
}
BENCHMARK(BM_Prefill)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();

// Decode: `batch` sequences with kPromptTokens of context each; one iteration is one decode step
// (one new token per sequence). The cache is cut back to the prompt between steps so every step
// sees the same context. Second argument: 1 = fused decode attention (the default), 0 = the
// per-sequence LibTorch ops.
void BM_Decode(benchmark::State& state) {
  const Model& model = BenchModel(state.range(1) != 0);
  const int64_t batch = state.range(0);
  KvCache cache(model.config(), model.options());
  std::vector<SequenceInput> prefill, step;
  for (int64_t s = 0; s < batch; ++s) {
    (void)cache.AddSequence(s);
    prefill.push_back({s, PromptTokens(s)});
    step.push_back({s, {static_cast<int32_t>(100 + s)}});
  }
  // Prefill in chunks of 8 sequences to bound activation memory.
  for (size_t i = 0; i < prefill.size(); i += 8) {
    const size_t n = std::min<size_t>(8, prefill.size() - i);
    auto r = model.Forward(absl::MakeConstSpan(prefill).subspan(i, n), &cache, LogitsMode::kLast);
    if (!r.ok()) {
      state.SkipWithError(r.status().ToString().c_str());
      return;
    }
  }
  // One untimed step first: it grows the cache past the prompt (a one-off copy).
  if (auto r = model.Forward(step, &cache, LogitsMode::kLast); !r.ok()) {
    state.SkipWithError(r.status().ToString().c_str());
    return;
  }
  for (int64_t s = 0; s < batch; ++s) cache.Truncate(s, kPromptTokens);
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    auto logits = model.Forward(step, &cache, LogitsMode::kLast);
    seconds += Since(start);
    if (!logits.ok()) {
      state.SkipWithError(logits.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(logits->data_ptr());
    state.PauseTiming();
    for (int64_t s = 0; s < batch; ++s) cache.Truncate(s, kPromptTokens);
    state.ResumeTiming();
  }
  const double rows = static_cast<double>(batch);
  SetCounters(state, rows, ForwardFlops(model.config(), rows, kPromptTokens + 1, batch), batch,
              seconds);
}
BENCHMARK(BM_Decode)
    ->ArgsProduct({{1, 8, 32}, {1, 0}})
    ->ArgNames({"batch", "fused"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The baseline on its own rows: at::mm at the decode and prefill row counts.
void BM_Gemm(benchmark::State& state) {
  c10::InferenceMode guard;
  const ModelConfig& c = BenchModel().config();
  const int64_t rows = state.range(0);
  at::Tensor x = at::randn({rows, c.hidden_size});
  at::Tensor w = at::randn({c.intermediate_size, c.hidden_size});
  for (auto _ : state) {
    at::Tensor y = at::mm(x, w.t());
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * rows * c.hidden_size * c.intermediate_size / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Gemm)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->Arg(1024)->Arg(4096)->UseRealTime();

int ThreadsFromArgs(int* argc, char** argv) {
  int threads = 2;
  if (const char* env = std::getenv("LORASERVE_BENCH_THREADS")) threads = std::atoi(env);
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  return threads > 0 ? threads : 2;
}

}  // namespace
}  // namespace loraserve::core

int main(int argc, char** argv) {
  const int threads = loraserve::core::ThreadsFromArgs(&argc, argv);
  at::set_num_threads(threads);
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  benchmark::AddCustomContext("OPENBLAS_CORETYPE", coretype != nullptr ? coretype : "(unset)");
  // OpenBLAS reports the kernel set it picked; looked up at run time so the bench does not link
  // OpenBLAS itself (LibTorch may use another BLAS).
  using CoreName = char* (*)();
  if (auto fn = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    benchmark::AddCustomContext("openblas_core", fn());
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
