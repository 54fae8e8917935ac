// The built-in default model: a randomly initialised Llama-architecture checkpoint with a small
// Llama-2-style BPE tokenizer, made deterministically from a seed, so the demo, the tests and the
// benchmarks need no download. The weights are random: the model runs every code path of a real
// checkpoint but its text is noise.
#ifndef LORASERVE_CORE_MODEL_MODEL_MAKER_H_
#define LORASERVE_CORE_MODEL_MODEL_MAKER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/io/json_file.h"
#include "core/model/model_config.h"

namespace loraserve::core {

enum class ModelPreset {
  // hidden 64, 4 layers, 4 heads (2 kv heads), intermediate 176, tied embeddings, vocabulary the
  // tokenizer's rounded up to a multiple of 64: small and fast, for the demo and tests.
  kTiny,
  // hidden 1024, 12 layers, 16 heads (16 kv heads), intermediate 2816, vocabulary 32000, separate
  // lm_head (~220M parameters): a realistic size for benchmarks.
  kBench,
};

// "tiny" / "bench"; InvalidArgument otherwise.
absl::StatusOr<ModelPreset> ParseModelPreset(absl::string_view name);
const char* ModelPresetName(ModelPreset preset);

struct ModelMakerOptions {
  ModelPreset preset = ModelPreset::kTiny;
  // Same seed, same bytes: weights come from a fixed counter-based generator (SplitMix64), not
  // from LibTorch's, so they do not depend on the LibTorch version or thread count.
  uint64_t seed = 0;
  // Let WriteDemoModel write into a non-empty directory (replacing the files it writes).
  bool overwrite = false;
};

// A model in memory, named as in a Hugging Face checkpoint (float32 tensors).
struct DemoModel {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
  Json tokenizer;  // tokenizer.json content
};

// The demo tokenizer's tokenizer.json: a Llama-2 / sentencepiece-style BPE (normalizer
// Prepend("▁") + Replace(" " -> "▁"), byte_fallback with <0x00>..<0xFF>, special <unk>=0, <s>=1,
// </s>=2, post-processor "<s> $A", decoder Replace / ByteFallback / Fuse / Strip) whose merges are
// learnt by byte-pair counting on a small built-in English text. Always the same.
Json DemoTokenizerJson();

// The configuration, weights and tokenizer of `options.preset` for `options.seed`.
// Internal only if LibTorch fails (e.g. out of memory: ResourceExhausted).
absl::StatusOr<DemoModel> MakeDemoModel(const ModelMakerOptions& options);

// Writes MakeDemoModel(options) to `dir` in Hugging Face layout: config.json, model.safetensors
// and tokenizer.json (creating `dir` if needed). FailedPrecondition if `dir` is a non-empty
// directory and !options.overwrite, or exists and is not a directory; Internal / InvalidArgument
// from the file writers.
absl::Status WriteDemoModel(const std::string& dir, const ModelMakerOptions& options);

// SplitMix64's output function (a bijective 64-bit mixer).
uint64_t Mix64(uint64_t z);

// A float32 tensor of `shape`, uniform in [-a, a) with a = sqrt(3) * stddev (so the standard
// deviation is `stddev`). Element i is a pure function of (seed, name, i): a counter-based
// SplitMix64 stream, so filling in parallel gives the same bytes for any thread count.
at::Tensor RandomTensor(std::vector<int64_t> shape, double stddev, uint64_t seed,
                        const std::string& name);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_MODEL_MAKER_H_
