// The frozen base model: a Llama-family decoder (Llama 2/3, Mistral, Qwen2) in LibTorch, with a
// KV cache designed for continuous batching and named linear modules that adapters attach to.
#ifndef LORASERVE_CORE_MODEL_MODEL_H_
#define LORASERVE_CORE_MODEL_MODEL_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model/model_config.h"

namespace loraserve::core {

struct ModelOptions {
  // Compute dtype: at::kFloat or at::kBFloat16.
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // Single-token (decode) sequences attend through one fused CPU loop over all of them
  // (core/model/decode_attention.h) instead of per-sequence LibTorch ops. Same results up to float
  // rounding; off = the per-sequence path (kept for other devices and for comparison).
  bool fused_decode_attention = true;
  // Score without adapter hooks runs short requests on small float32 CPU models through plain
  // loops (core/model/small_forward.h) instead of ~50 LibTorch operators per layer: the idle
  // Score latency. Same results up to float rounding; off = always the LibTorch forward.
  bool small_cpu_forward = true;
};

// One linear layer, addressed by its Hugging Face module path
// ("model.layers.3.self_attn.q_proj", "lm_head").
struct LinearModule {
  int id = 0;  // index in Model::linears()
  std::string name;
  int64_t in_features = 0;
  int64_t out_features = 0;
  at::Tensor weight;  // [out, in], compute dtype and device
  at::Tensor bias;    // [out] or undefined
};

// Lets an adapter layer change module outputs row by row during one forward. The model calls the
// hooks on the thread running Forward; implementations are per-forward objects that know which
// adapter each token row belongs to. Rows are token rows of the packed batch, in input order.
class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;
  // `x` [T, in] the module's input rows, `y` [T, out] its base output. Returns the output to use
  // (may be `y` modified in place).
  virtual at::Tensor OnLinear(const LinearModule& module, const at::Tensor& x, at::Tensor y) = 0;
  // `ids` [T] token ids, `y` [T, hidden] the base embedding rows.
  virtual at::Tensor OnEmbedding(const at::Tensor& ids, at::Tensor y) = 0;
  // `hidden` [R, hidden] final-normed rows whose logits are wanted, `rows` [R] (int64) their token
  // row indices, `logits` [R, vocab] the base head output.
  virtual at::Tensor OnHead(const at::Tensor& hidden, const at::Tensor& rows, at::Tensor logits) = 0;
};

// Per-sequence key/value cache. Memory is accounted in bytes so a scheduler can bound it:
// Reserve fails with ResourceExhausted instead of allocating past the budget.
// Not thread-safe: owned and used by one engine thread.
class KvCache {
 public:
  // `budget_bytes` <= 0 means unbounded.
  KvCache(const ModelConfig& config, const ModelOptions& options, int64_t budget_bytes = 0);
  ~KvCache();

  // Starts an empty sequence. AlreadyExists if `seq_id` is live.
  absl::Status AddSequence(int64_t seq_id);
  // Frees a sequence's memory; unknown ids are ignored.
  void RemoveSequence(int64_t seq_id);
  bool HasSequence(int64_t seq_id) const;
  // Tokens cached so far; -1 for an unknown sequence.
  int64_t Length(int64_t seq_id) const;
  // Makes room for `total_tokens` tokens in `seq_id`. ResourceExhausted if that would exceed the
  // budget (nothing changes then); NotFound for an unknown sequence.
  absl::Status Reserve(int64_t seq_id, int64_t total_tokens);
  // Drops cached tokens past `length` (e.g. to recompute after preemption).
  void Truncate(int64_t seq_id, int64_t length);

  int64_t bytes_per_token() const { return bytes_per_token_; }
  int64_t bytes_reserved() const { return bytes_reserved_; }
  int64_t budget_bytes() const { return budget_bytes_; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }

 private:
  friend class Model;
  struct Sequence {
    int64_t length = 0;
    int64_t capacity = 0;
    std::vector<at::Tensor> k;  // per layer [kv_heads, capacity, head_dim]
    std::vector<at::Tensor> v;
  };
  Sequence* Find(int64_t seq_id);

  int64_t layers_, kv_heads_, head_dim_;
  ModelOptions options_;
  int64_t bytes_per_token_;
  int64_t budget_bytes_;
  int64_t bytes_reserved_ = 0;
  std::unordered_map<int64_t, Sequence> seqs_;
};

// New tokens for one sequence in a forward step: a prefill chunk or one decode token.
struct SequenceInput {
  int64_t seq_id = 0;
  std::vector<int32_t> tokens;
};

enum class LogitsMode {
  kLast,  // one row per sequence: the logits after its last new token (generation)
  kAll,   // one row per new token (scoring)
};

// A Llama-family causal LM. Weights are frozen except through the explicit mutable accessors used
// by merge/unmerge, which the caller must serialise with forwards (one engine thread per device).
// Forward on distinct caches may run concurrently.
class Model {
 public:
  // Loads a Hugging Face checkpoint directory: config.json and model.safetensors or a sharded
  // model.safetensors.index.json. InvalidArgument naming what is missing or unsupported;
  // NotFound if the directory or config.json does not exist.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options);
  // Builds a model from tensors named as in a Hugging Face checkpoint (any float dtype).
  static absl::StatusOr<std::unique_ptr<Model>> FromTensors(
      const ModelConfig& config, const std::map<std::string, at::Tensor>& tensors,
      const ModelOptions& options, const std::string& name);
  ~Model();

  // Runs the new tokens of every sequence in `batch` (any mix of prefill chunks and decode tokens,
  // each sequence at most once), appending their keys/values to `cache`. Returns float32 logits:
  // [batch.size(), vocab] for kLast, [total new tokens, vocab] for kAll (rows in input order).
  // InvalidArgument for unknown sequences, empty inputs, out-of-vocabulary ids or positions past
  // the maximum; ResourceExhausted if the cache budget is full (the cache is left unchanged).
  absl::StatusOr<at::Tensor> Forward(absl::Span<const SequenceInput> batch, KvCache* cache,
                                     LogitsMode mode, ForwardHooks* hooks = nullptr) const;

  // Scores one token sequence from scratch (no persistent cache): [tokens.size(), vocab] float32.
  absl::StatusOr<at::Tensor> Score(absl::Span<const int32_t> tokens,
                                   ForwardHooks* hooks = nullptr) const;
  // True when Score(tokens) without hooks takes the small CPU forward (see ModelOptions).
  bool ScoresInPlainLoops(int64_t num_tokens) const;

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  // Directory name (or the given name) and a fingerprint of the weights as loaded.
  const std::string& name() const { return name_; }
  const std::string& fingerprint() const { return fingerprint_; }
  int64_t num_parameters() const { return num_parameters_; }

  // Every linear layer, lm_head last. The head's weight is the embedding while tied.
  const std::vector<LinearModule>& linears() const { return linears_; }
  const LinearModule* FindLinear(const std::string& name) const;
  LinearModule* MutableLinear(const std::string& name);
  // [vocab, hidden] input embedding.
  const at::Tensor& embedding() const { return embed_; }
  at::Tensor& mutable_embedding() { return embed_; }
  // The RMSNorm weights by checkpoint name (never changed by adapters).
  std::vector<std::pair<std::string, at::Tensor>> NormWeights() const;
  // True while lm_head shares the embedding's storage.
  bool head_tied() const;

 private:
  Model() = default;
  absl::Status Init(const std::map<std::string, at::Tensor>& tensors);
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor ApplyLinear(const LinearModule& m, const at::Tensor& x, ForwardHooks* hooks) const;
  absl::StatusOr<at::Tensor> ScoreSmall(absl::Span<const int32_t> tokens) const;

  struct Layer {
    at::Tensor input_norm, post_norm;
    int q, k, v, o, gate, up, down;  // indices into linears_
  };

  ModelConfig config_;
  ModelOptions options_;
  std::string name_;
  std::string fingerprint_;
  int64_t num_parameters_ = 0;
  at::Tensor embed_;
  at::Tensor final_norm_;
  std::vector<Layer> layers_;
  std::vector<LinearModule> linears_;
  std::map<std::string, int> linear_index_;
  at::Tensor rope_cos_, rope_sin_;  // [max_positions, head_dim] float32
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_MODEL_H_
