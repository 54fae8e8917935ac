// Adapter load time against the raw read of the same files (issue 13 item 7: a load should cost
// at most 2x reading its bytes). A rank-16 q/k/v/o adapter of the bench preset (~220M-parameter
// Llama built in memory) is written once as a PEFT directory; then, page cache warm for both:
//   RawRead          read adapter_config.json and adapter_model.safetensors into memory
//   Load/fp32        LoraAdapter::Load (parse, validate shapes, finiteness and scaling, keep fp32)
//   Load/bf16        the same with --adapter_dtype=bfloat16 (one conversion pass)
// Each Load row reports vs_raw = its time ÷ RawRead's in the same run.
// Threads: $LORASERVE_BENCH_THREADS (default 2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "core/io/file_util.h"
#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"

namespace loraserve::core {
namespace {

struct Setup {
  std::unique_ptr<Model> model;
  std::unique_ptr<LoraModel> lora;
  std::string dir;
  int64_t bytes = 0;
};

Setup& Bench() {
  static Setup* s = [] {
    const char* env = std::getenv("LORASERVE_BENCH_THREADS");
    at::set_num_threads(env != nullptr ? std::atoi(env) : 2);
    c10::InferenceMode guard;
    auto* setup = new Setup();
    ModelMakerOptions options;
    options.preset = ModelPreset::kBench;
    auto made = MakeDemoModel(options);
    if (!made.ok()) std::abort();
    setup->model = std::move(*Model::FromTensors(made->config, made->tensors, ModelOptions(), "bench"));
    setup->lora = std::make_unique<LoraModel>(setup->model.get());
    LoraConfig cfg;
    cfg.r = 16;
    cfg.lora_alpha = 32;
    cfg.target_list = {"q_proj", "k_proj", "v_proj", "o_proj"};
    std::map<std::string, at::Tensor> t;
    at::manual_seed(0);
    for (const LinearModule& lm : setup->model->linears()) {
      if (!cfg.Targets(lm.name, true, lm.name == "lm_head")) continue;
      const std::string p = std::string(kPeftPrefix) + lm.name;
      t[p + ".lora_A.weight"] = at::randn({16, lm.in_features}) * 0.01;
      t[p + ".lora_B.weight"] = at::randn({lm.out_features, 16}) * 0.01;
    }
    auto a = LoraAdapter::FromTensors("bench", cfg, t, *setup->model, setup->lora->BaseWeightFn(), AdapterLoadOptions());
    if (!a.ok()) std::abort();
    setup->dir = (std::filesystem::temp_directory_path() / "loraserve_adapter_load_bench").string();
    std::filesystem::remove_all(setup->dir);
    std::filesystem::create_directories(setup->dir);
    if (!SaveAdapter(**a, setup->dir).ok()) std::abort();
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) {
      setup->bytes += static_cast<int64_t>(std::filesystem::file_size(setup->dir + "/" + f));
    }
    std::fprintf(stderr, "adapter_load_bench: %s, %.1f MB\n", setup->dir.c_str(), setup->bytes / 1e6);
    return setup;
  }();
  return *s;
}

void BM_RawRead(benchmark::State& state) {
  Setup& s = Bench();
  for (auto _ : state) {
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) {
      auto bytes = ReadFile(s.dir + "/" + f);
      if (!bytes.ok()) std::abort();
      benchmark::DoNotOptimize(bytes->data());
    }
  }
  state.SetBytesProcessed(state.iterations() * s.bytes);
}

void BM_Load(benchmark::State& state) {
  Setup& s = Bench();
  c10::InferenceMode guard;
  AdapterLoadOptions o;
  o.dtype = state.range(0) == 16 ? "bfloat16" : "float32";
  for (auto _ : state) {
    auto a = LoraAdapter::Load("bench", s.dir, *s.model, s.lora->BaseWeightFn(), o);
    if (!a.ok()) std::abort();
    benchmark::DoNotOptimize(a->get());
  }
  state.SetBytesProcessed(state.iterations() * s.bytes);
  state.SetLabel(o.dtype);
}

// Console reporter that adds vs_raw (time ÷ RawRead's time) to every Load row.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> out = runs;
    for (Run& r : out) {
      const double t = r.GetAdjustedRealTime();
      if (r.benchmark_name().rfind("BM_RawRead", 0) == 0) raw_ = t;
      if (r.benchmark_name().rfind("BM_Load", 0) == 0 && raw_ > 0) r.counters["vs_raw"] = t / raw_;
    }
    ConsoleReporter::ReportRuns(out);
  }

 private:
  double raw_ = 0;
};

BENCHMARK(BM_RawRead)->Unit(benchmark::kMillisecond)->MinTime(2)->UseRealTime();
BENCHMARK(BM_Load)->Arg(32)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(2)->UseRealTime();

}  // namespace
}  // namespace loraserve::core

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  loraserve::core::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
