// Engine throughput on any device with a shaped random base (the device check's benchmark):
// decode tokens/s and time to first token (one prefill of the whole batch) for every batch size
// and number of distinct adapters, against the base and a merged adapter in the same run.
//
//   engine_device_bench --device=cuda --dtype=bfloat16 --shape=llama7b --out=rows.tsv
//   engine_device_bench --device=cpu --dtype=float32 --shape=tiny          (dry run)
//
// Flags: --shape=llama7b|tiny (llama7b: hidden 4096, 32 layers, ffn 11008, vocab 32000, 32 heads),
// --batches=1,32,128 --adapters=1,32,128 (adapter counts above a batch size are skipped),
// --rank=16 (on q,k,v,o), --context=128 (prompt tokens), --steps=32 (timed decode steps),
// --threads=N (CPU), --out=FILE (tab-separated rows; also printed). Weights are made on the device
// with LibTorch's generator (seeded), so a 7B base needs no host copy of it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"

namespace loraserve::core {
namespace {

struct Flags {
  std::string device = "cpu", dtype = "float32", shape = "tiny", out;
  std::vector<int> batches = {1, 32, 128}, adapters = {1, 32, 128};
  int rank = 16, context = 128, steps = 32, threads = 0;
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> v;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) v.push_back(std::atoi(item.c_str()));
  return v;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "engine_device_bench: %s\n", message.c_str());
  std::exit(2);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Die("expected --name=value, got " + arg);
    const std::string key = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (key == "device") f.device = value;
    else if (key == "dtype") f.dtype = value;
    else if (key == "shape") f.shape = value;
    else if (key == "out") f.out = value;
    else if (key == "batches") f.batches = ParseList(value);
    else if (key == "adapters") f.adapters = ParseList(value);
    else if (key == "rank") f.rank = std::atoi(value.c_str());
    else if (key == "context") f.context = std::atoi(value.c_str());
    else if (key == "steps") f.steps = std::atoi(value.c_str());
    else if (key == "threads") f.threads = std::atoi(value.c_str());
    else Die("unknown flag --" + key);
  }
  if (f.rank < 1 || f.context < 1 || f.steps < 1) Die("--rank, --context and --steps must be positive");
  return f;
}

ModelConfig ShapeConfig(const std::string& shape) {
  ModelConfig c;
  c.model_type = "llama";
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  if (shape == "llama7b") {
    c.hidden_size = 4096;
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_attention_heads = c.num_key_value_heads = 32;
    c.vocab_size = 32000;
    c.max_position_embeddings = 4096;
  } else if (shape == "tiny") {
    c.hidden_size = 64;
    c.intermediate_size = 176;
    c.num_hidden_layers = 2;
    c.num_attention_heads = c.num_key_value_heads = 4;
    c.vocab_size = 512;
    c.max_position_embeddings = 1024;
  } else {
    Die("unknown --shape " + shape + " (llama7b, tiny)");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

// Random weights scaled 1/sqrt(fan_in), made on the device in the compute dtype.
std::map<std::string, at::Tensor> MakeWeights(const ModelConfig& c, const at::TensorOptions& opts) {
  std::map<std::string, at::Tensor> t;
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    t[name] = (at::randn(shape, opts.dtype(at::kFloat)) / std::sqrt(static_cast<double>(shape.back()))).to(opts.dtype());
  };
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) add(p + "self_attn." + m + ".weight", {h, h});
    add(p + "mlp.gate_proj.weight", {inter, h});
    add(p + "mlp.up_proj.weight", {inter, h});
    add(p + "mlp.down_proj.weight", {h, inter});
    t[p + "input_layernorm.weight"] = at::ones({h}, opts);
    t[p + "post_attention_layernorm.weight"] = at::ones({h}, opts);
  }
  t["model.norm.weight"] = at::ones({h}, opts);
  add("lm_head.weight", {c.vocab_size, h});
  return t;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

struct Row {
  int batch = 0, distinct = 0;
  std::string mode;
  double ttft_ms = 0, decode_tok_s = 0, vs_base = 0;
};

class Bench {
 public:
  explicit Bench(const Flags& f) : f_(f) {
    ModelOptions mo;
    mo.device = at::Device(f.device);
    mo.dtype = f.dtype == "bfloat16" ? at::kBFloat16 : f.dtype == "float16" ? at::kHalf : at::kFloat;
    const ModelConfig c = ShapeConfig(f.shape);
    at::manual_seed(0);
    const auto t0 = std::chrono::steady_clock::now();
    auto weights = MakeWeights(c, at::TensorOptions().device(mo.device).dtype(mo.dtype));
    auto model = Model::FromTensors(c, weights, mo, f.shape);
    if (!model.ok()) Die(model.status().ToString());
    model_ = std::move(*model);
    weights.clear();
    lora_ = std::make_unique<LoraModel>(model_.get());
    const int max_adapters = *std::max_element(f.adapters.begin(), f.adapters.end());
    for (int i = 0; i < max_adapters; ++i) {
      LoraConfig cfg;
      cfg.r = f.rank;
      cfg.lora_alpha = 2 * f.rank;
      cfg.target_list = {"q_proj", "k_proj", "v_proj", "o_proj"};
      std::map<std::string, at::Tensor> t;
      for (const LinearModule& lm : model_->linears()) {
        if (!cfg.Targets(lm.name, true, lm.name == "lm_head")) continue;
        const std::string p = std::string(kPeftPrefix) + lm.name;
        const auto o = at::TensorOptions().device(mo.device);
        t[p + ".lora_A.weight"] = at::randn({f.rank, lm.in_features}, o) * 0.01;
        t[p + ".lora_B.weight"] = at::randn({lm.out_features, f.rank}, o) * 0.01;
      }
      auto a = LoraAdapter::FromTensors("a" + std::to_string(i), cfg, t, *model_, lora_->BaseWeightFn(),
                                        AdapterLoadOptions());
      if (!a.ok()) Die(a.status().ToString());
      adapters_.push_back(*a);
    }
    std::fprintf(stderr, "engine_device_bench: %s %s on %s, %lld parameters, %d adapters, set up in %.1f s\n",
                 f.shape.c_str(), f.dtype.c_str(), f.device.c_str(),
                 static_cast<long long>(model_->num_parameters()), max_adapters, Seconds(t0));
  }

  // mode: "base", "merged" (adapter 0 merged, every row uses it) or "distinct".
  Row Measure(int batch, int distinct, const std::string& mode) {
    c10::InferenceMode guard;
    std::vector<std::shared_ptr<const LoraAdapter>> rows;
    for (int r = 0; r < batch; ++r) {
      rows.push_back(mode == "base" ? nullptr : adapters_[static_cast<size_t>(mode == "merged" ? 0 : r % distinct)]);
    }
    if (mode == "merged" && !lora_->Merge(adapters_[0]).ok()) Die("merge failed");
    KvCache cache(model_->config(), model_->options());
    std::vector<SequenceInput> prompts, step;
    for (int64_t r = 0; r < batch; ++r) {
      (void)cache.AddSequence(r);
      prompts.push_back({r, std::vector<int32_t>(static_cast<size_t>(f_.context), static_cast<int32_t>(10 + r))});
      step.push_back({r, {7}});
    }
    auto forward = [&](const std::vector<SequenceInput>& batch_in) {
      auto logits = lora_->Forward(batch_in, rows, &cache, LogitsMode::kLast);
      if (!logits.ok()) Die(logits.status().ToString());
      return logits->sum().item<float>();  // waits for the device
    };
    // Time to first token: the whole batch's prefill, best of three (after a warm-up).
    double ttft = 1e30;
    for (int rep = 0; rep < 4; ++rep) {
      for (int64_t r = 0; r < batch; ++r) cache.Truncate(r, 0);
      const auto t0 = std::chrono::steady_clock::now();
      forward(prompts);
      if (rep > 0) ttft = std::min(ttft, Seconds(t0));
    }
    forward(step);  // warm-up decode step
    for (int64_t r = 0; r < batch; ++r) cache.Truncate(r, f_.context);
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < f_.steps; ++s) {
      auto logits = lora_->Forward(step, rows, &cache, LogitsMode::kLast);
      if (!logits.ok()) Die(logits.status().ToString());
      for (int64_t r = 0; r < batch; ++r) cache.Truncate(r, f_.context);
      if (s + 1 == f_.steps) (void)logits->sum().item<float>();
    }
    const double secs = Seconds(t0);
    if (mode == "merged" && !lora_->Unmerge(adapters_[0]->name()).ok()) Die("unmerge failed");
    Row row{batch, mode == "base" ? 0 : distinct, mode, ttft * 1e3, batch * f_.steps / secs, 0};
    return row;
  }

 private:
  const Flags& f_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters_;
};

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  if (f.threads > 0) at::set_num_threads(f.threads);
  Bench bench(f);
  std::vector<Row> rows;
  for (int batch : f.batches) {
    Row base = bench.Measure(batch, 0, "base");
    base.vs_base = 1.0;
    rows.push_back(base);
    Row merged = bench.Measure(batch, 1, "merged");
    merged.vs_base = merged.decode_tok_s / base.decode_tok_s;
    rows.push_back(merged);
    for (int n : f.adapters) {
      if (n > batch) continue;
      Row r = bench.Measure(batch, n, "distinct");
      r.vs_base = r.decode_tok_s / base.decode_tok_s;
      rows.push_back(r);
    }
  }
  std::ostringstream out;
  out << "batch\tadapters\tmode\tttft_ms\tdecode_tok_s\tvs_base\n";
  for (const Row& r : rows) {
    char line[256];
    std::snprintf(line, sizeof(line), "%d\t%d\t%s\t%.2f\t%.1f\t%.3f\n", r.batch, r.distinct, r.mode.c_str(),
                  r.ttft_ms, r.decode_tok_s, r.vs_base);
    out << line;
  }
  std::fputs(out.str().c_str(), stdout);
  if (!f.out.empty()) std::ofstream(f.out) << out.str();
  return 0;
}

}  // namespace
}  // namespace loraserve::core

int main(int argc, char** argv) { return loraserve::core::Main(argc, argv); }
