// Multi-adapter serving throughput on CPU, the bench preset (~220M parameters, fp32, built in
// memory), rank-16 adapters on q/k/v/o, batch 32 sequences with 128 tokens of context.
// Every row reports tokens_per_s and vs_base = its tokens/s ÷ the base model's in the same run:
//   Base            no adapter
//   Merged          one adapter merged into the weights, every row uses it
//   Distinct/N      N distinct unmerged adapters spread over the 32 rows (mixed batch)
//   DistinctBf16/N  the same adapters stored in bfloat16 (--adapter_dtype=bfloat16; fp32 products)
//   PeftSwap/N      the PEFT-style alternative: the batch split per adapter, one forward per adapter
// Decode = one new token per row per step; Prefill = the 128-token prompts of all rows.
// Threads: $LORASERVE_BENCH_THREADS (default 2). Dtype: $LORASERVE_BENCH_DTYPE = float32 (default)
// or bfloat16 (base weights in bf16; the LoRA products stay fp32). LoRA kernel:
// $LORASERVE_BENCH_LORA_KERNEL = cpu (default on CPU: row-wise fused loop for small segments) or
// gather (one GEMM pair per adapter segment).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"

namespace loraserve::core {
namespace {

constexpr int64_t kBatch = 32;
constexpr int64_t kContext = 128;
constexpr int64_t kRank = 16;

struct Setup {
  std::unique_ptr<Model> model;
  std::unique_ptr<LoraModel> lora;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;       // 32 distinct
  std::vector<std::shared_ptr<const LoraAdapter>> adapters_bf16;  // the same, stored in bf16
};

Setup& Bench() {
  static Setup* s = [] {
    const char* env = std::getenv("LORASERVE_BENCH_THREADS");
    at::set_num_threads(env != nullptr ? std::atoi(env) : 2);
    auto* setup = new Setup();
    ModelMakerOptions options;
    options.preset = ModelPreset::kBench;
    auto made = MakeDemoModel(options);
    if (!made.ok()) std::abort();
    ModelOptions mo;
    const char* dtype = std::getenv("LORASERVE_BENCH_DTYPE");
    if (dtype != nullptr && std::string(dtype) == "bfloat16") mo.dtype = at::kBFloat16;
    setup->model = std::move(*Model::FromTensors(made->config, made->tensors, mo, "bench"));
    const char* kernel = std::getenv("LORASERVE_BENCH_LORA_KERNEL");
    const bool gather = kernel != nullptr && std::string(kernel) == "gather";
    std::fprintf(stderr, "lora_bench: LoRA kernel %s\n", gather ? "gather" : "cpu");
    setup->lora = std::make_unique<LoraModel>(setup->model.get(),
                                              gather ? MakeGatherLoraKernel() : nullptr);
    at::manual_seed(0);
    for (int i = 0; i < kBatch; ++i) {
      LoraConfig cfg;
      cfg.r = kRank;
      cfg.lora_alpha = 2 * kRank;
      cfg.target_list = {"q_proj", "k_proj", "v_proj", "o_proj"};
      std::map<std::string, at::Tensor> t;
      for (const LinearModule& lm : setup->model->linears()) {
        if (!cfg.Targets(lm.name, true, lm.name == "lm_head")) continue;
        const std::string p = std::string(kPeftPrefix) + lm.name;
        t[p + ".lora_A.weight"] = at::randn({kRank, lm.in_features}) * 0.01;
        t[p + ".lora_B.weight"] = at::randn({lm.out_features, kRank}) * 0.01;
      }
      auto a = LoraAdapter::FromTensors("a" + std::to_string(i), cfg, t, *setup->model,
                                        setup->lora->BaseWeightFn(), AdapterLoadOptions());
      if (!a.ok()) std::abort();
      setup->adapters.push_back(*a);
      AdapterLoadOptions bf16;
      bf16.dtype = "bfloat16";
      auto h = LoraAdapter::FromTensors("h" + std::to_string(i), cfg, t, *setup->model,
                                        setup->lora->BaseWeightFn(), bf16);
      if (!h.ok()) std::abort();
      setup->adapters_bf16.push_back(*h);
    }
    return setup;
  }();
  return *s;
}

std::vector<std::shared_ptr<const LoraAdapter>> RowAdapters(int distinct, bool bf16) {
  std::vector<std::shared_ptr<const LoraAdapter>> rows;
  const auto& set = bf16 ? Bench().adapters_bf16 : Bench().adapters;
  for (int64_t r = 0; r < kBatch; ++r) {
    rows.push_back(distinct == 0 ? nullptr : set[r % distinct]);
  }
  return rows;
}

double& BaseRate(bool decode) {
  static double rates[2] = {0, 0};
  return rates[decode ? 1 : 0];
}

// mode: 0 base, 1 merged, 2 distinct unmerged, 3 PEFT-style per-adapter forwards, 4 distinct
// unmerged bf16-stored adapters.
// Returns tokens per second of the timed loop.
double Run(benchmark::State& state, bool decode, int mode, int distinct) {
  Setup& s = Bench();
  c10::InferenceMode guard;
  std::vector<std::shared_ptr<const LoraAdapter>> rows = RowAdapters(mode == 0 ? 0 : distinct, mode == 4);
  if (mode == 1) {
    (void)s.lora->Merge(s.adapters[0]);
    rows.assign(kBatch, s.adapters[0]);
  }
  KvCache cache(s.model->config(), s.model->options());
  std::vector<SequenceInput> prompts;
  for (int64_t r = 0; r < kBatch; ++r) {
    (void)cache.AddSequence(r);
    prompts.push_back({r, std::vector<int32_t>(kContext, static_cast<int32_t>(10 + r))});
  }
  auto forward = [&](const std::vector<SequenceInput>& batch) {
    if (mode == 3) {
      // One forward per adapter group.
      for (int g = 0; g < distinct; ++g) {
        std::vector<SequenceInput> part;
        std::vector<std::shared_ptr<const LoraAdapter>> pa;
        for (size_t r = 0; r < batch.size(); ++r) {
          if (static_cast<int>(r) % distinct == g) {
            part.push_back(batch[r]);
            pa.push_back(rows[r]);
          }
        }
        (void)s.lora->Forward(part, pa, &cache, LogitsMode::kLast);
      }
    } else {
      (void)s.lora->Forward(batch, rows, &cache, LogitsMode::kLast);
    }
  };
  if (decode) forward(prompts);  // context
  std::vector<SequenceInput> step;
  for (int64_t r = 0; r < kBatch; ++r) step.push_back({r, {7}});
  int64_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (decode) {
      forward(step);
      for (int64_t r = 0; r < kBatch; ++r) cache.Truncate(r, kContext);
      tokens += kBatch;
    } else {
      forward(prompts);
      for (int64_t r = 0; r < kBatch; ++r) cache.Truncate(r, 0);
      tokens += kBatch * kContext;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (mode == 1) (void)s.lora->Unmerge(s.adapters[0]->name());
  return static_cast<double>(tokens) / secs;
}

void Report(benchmark::State& state, bool decode, int mode, int distinct) {
  const double rate = Run(state, decode, mode, distinct);
  state.counters["tokens_per_s"] = rate;
  if (mode == 0) BaseRate(decode) = rate;
  if (BaseRate(decode) > 0) state.counters["vs_base"] = rate / BaseRate(decode);
}

void BM_DecodeBase(benchmark::State& s) { Report(s, true, 0, 0); }
void BM_DecodeMerged(benchmark::State& s) { Report(s, true, 1, 1); }
void BM_DecodeDistinct(benchmark::State& s) { Report(s, true, 2, static_cast<int>(s.range(0))); }
void BM_DecodePeftSwap(benchmark::State& s) { Report(s, true, 3, static_cast<int>(s.range(0))); }
void BM_DecodeDistinctBf16(benchmark::State& s) { Report(s, true, 4, static_cast<int>(s.range(0))); }
void BM_PrefillBase(benchmark::State& s) { Report(s, false, 0, 0); }
void BM_PrefillDistinct(benchmark::State& s) { Report(s, false, 2, static_cast<int>(s.range(0))); }

BENCHMARK(BM_DecodeBase)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_DecodeMerged)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_DecodeDistinct)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_DecodeDistinctBf16)->Arg(32)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_DecodePeftSwap)->Arg(32)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_PrefillBase)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();
BENCHMARK(BM_PrefillDistinct)->Arg(32)->Unit(benchmark::kMillisecond)->MinTime(3)->UseRealTime();

}  // namespace
}  // namespace loraserve::core

BENCHMARK_MAIN();
