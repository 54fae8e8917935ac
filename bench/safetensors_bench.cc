// Safetensors load: zero-copy mapping vs. reading the file into memory (the baseline).
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include "core/io/file_util.h"
#include "core/io/tensor_io.h"

namespace loraserve::core {
namespace {

const std::string& BenchFile() {
  static const std::string path = [] {
    std::string p = "/tmp/loraserve_bench.safetensors";
    NamedTensors t;
    for (int i = 0; i < 64; ++i) t.emplace_back("w" + std::to_string(i), at::randn({256, 1024}));
    (void)SaveSafetensors(p, t);
    return p;
  }();
  return path;
}

void BM_ReadWholeFile(benchmark::State& state) {
  const std::string& path = BenchFile();
  for (auto _ : state) {
    auto bytes = ReadFile(path);
    benchmark::DoNotOptimize(bytes);
    state.SetBytesProcessed(state.bytes_processed() + static_cast<int64_t>(bytes->size()));
  }
}
BENCHMARK(BM_ReadWholeFile);

void BM_LoadSafetensorsZeroCopy(benchmark::State& state) {
  const std::string& path = BenchFile();
  for (auto _ : state) {
    auto tensors = LoadSafetensors(path);
    benchmark::DoNotOptimize(tensors);
    state.SetBytesProcessed(state.bytes_processed() + 64 * 256 * 1024 * 4);
  }
}
BENCHMARK(BM_LoadSafetensorsZeroCopy);

}  // namespace
}  // namespace loraserve::core

BENCHMARK_MAIN();
