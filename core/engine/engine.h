// The serving engine: one owner thread per device runs a continuous-batching loop over the base
// model with per-request LoRA adapters. RPC threads only submit work and receive callbacks.
//
// This header is free of LibTorch so the gRPC layer can include it cheaply.
//
// Threading: every public method is thread-safe. Callbacks (on_token, on_done, task completions)
// run on the engine thread, or on the calling thread for errors detected at submission; they
// must not block (post to a reactor and return).
#ifndef LORASERVE_CORE_ENGINE_ENGINE_H_
#define LORASERVE_CORE_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/engine/scheduler.h"
#include "core/io/json_file.h"
#include "core/lora/adapter_types.h"
#include "core/model/generation_types.h"

namespace loraserve::core {

struct EngineOptions {
  std::string model_dir;             // Hugging Face checkpoint directory (with tokenizer.json)
  std::string dtype = "float32";     // float32 | bfloat16 | float16 (float16 on CUDA only)
  std::string device = "cpu";        // cpu | cuda[:N] (needs the CUDA flavour and a visible GPU)
  int num_threads = 0;               // LibTorch intra-op threads; 0 = hardware concurrency
  int max_batch_size = 32;           // sequences per step
  int max_batch_tokens = 2048;       // new tokens per step; long prompts are prefilled in chunks
  absl::Duration max_wait = absl::Milliseconds(2);  // wait for more requests when the batch is small
  int max_queue = 1024;              // waiting requests in all; beyond → ResourceExhausted
  int max_queue_per_adapter = 256;   // waiting requests of one adapter; beyond → ResourceExhausted
  int64_t kv_budget_bytes = 1ll << 30;  // KV cache memory; admission waits (or preempts) when full
  BatchPolicy policy = BatchPolicy::kMixed;
  AdapterRegistryOptions adapters;   // budget for resident adapter weights, load limits
  int adapter_load_threads = 2;      // threads loading adapters that waiting requests need
};

// Checks a --device value against this build and this machine and returns its canonical name
// ("cpu", "cuda:N"): InvalidArgument for a malformed or unsupported device or an index beyond the
// visible GPUs, FailedPrecondition for CUDA on a build without it or a machine without a GPU.
absl::StatusOr<std::string> ResolveDevice(const std::string& device);

// One generation request.
struct GenerateRequest {
  std::string request_id;
  std::string adapter;                  // "" = the base model
  std::vector<int32_t> prompt_ids;      // tokenized prompt (BOS included where the model wants one)
  SamplingOptions sampling;
  absl::Time deadline = absl::InfiniteFuture();
  // Fair-share group of the scheduler (the server's tenant) and its weight: running slots are
  // shared by weight among the tenants with waiting requests.
  std::string tenant;
  double tenant_weight = 1.0;
};

// Timings and sizes of one finished request (for metrics and access logs).
struct RequestStats {
  absl::Duration queue_time;           // submit → first scheduled
  absl::Duration time_to_first_token;  // submit → first token
  absl::Duration total;                // submit → done
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct GenerateCallbacks {
  // Each new token as soon as it is sampled (optional).
  std::function<void(const TokenEvent&)> on_token;
  // Exactly once: the result or the error (NotFound unknown adapter, InvalidArgument,
  // DeadlineExceeded, Cancelled, Unavailable while shutting down, ResourceExhausted).
  std::function<void(absl::StatusOr<GenerationResult>, const RequestStats&)> on_done;
};

// Handle to a submitted request; Cancel() stops its work at the next step boundary (on_done then
// reports Cancelled).
class RequestHandle {
 public:
  virtual ~RequestHandle() = default;
  virtual void Cancel() = 0;
};

struct ScoreRequest {
  std::string request_id;
  std::string adapter;               // "" = the base model
  std::vector<int32_t> token_ids;
  bool full_logits = false;          // return every position's float32 logits
  int32_t top_logprobs = 0;          // per position: the k most likely next tokens
};

struct ScoreResult {
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;
  std::vector<float> logits;          // [num_tokens * vocab_size] row-major when full_logits
  std::vector<float> token_logprobs;  // [num_tokens - 1]: log p(token[t+1] | tokens[..t])
  std::vector<std::vector<TokenLogprob>> top;  // [num_tokens] when top_logprobs > 0
};

struct EngineStats {
  int64_t steps = 0;
  int64_t multi_adapter_steps = 0;   // steps whose batch had more than one distinct adapter (or base)
  int64_t tokens_in = 0;             // prompt tokens prefilled
  int64_t tokens_out = 0;            // tokens generated
  int64_t queue_depth = 0;           // waiting requests
  int64_t running = 0;               // sequences in the running batch
  int64_t kv_bytes_reserved = 0;
  int64_t kv_budget_bytes = 0;
  int64_t preemptions = 0;
  int64_t last_batch_size = 0;
  int64_t last_batch_adapters = 0;
  int64_t adapter_evictions = 0;
  int64_t adapter_bytes_resident = 0;
  int64_t adapter_loads = 0;         // loads of non-resident adapters for requests (and Get)
  double adapter_load_seconds = 0;   // their total time
  int64_t adapter_misses = 0;        // requests that found their adapter not resident
  int64_t adapter_load_waiting = 0;  // requests waiting for an adapter load now
  AdapterCounts adapters;
  bool ready = false;                // model loaded and warm-up forward done
};

// Called after each step with its batch size and distinct adapters (for metrics). Engine thread.
using StepObserver = std::function<void(int batch_size, int distinct_adapters, int new_tokens,
                                        absl::Duration step_time)>;

class Engine {
 public:
  // Loads the model and tokenizer, runs a warm-up forward, starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;

  // --- Inference -------------------------------------------------------------------------
  // Queues a generation. Errors found at submission (unknown adapter, invalid options, full
  // queue → ResourceExhausted, shutting down → Unavailable) are returned here and on_done is
  // not called; otherwise on_done is called exactly once later. A request whose adapter is not
  // resident waits for its load first; errors of that load, or a queue found full once it has
  // loaded, reach on_done.
  virtual absl::StatusOr<std::shared_ptr<RequestHandle>> SubmitGenerate(
      GenerateRequest request, GenerateCallbacks callbacks) = 0;
  // Scores token ids (full forward, no sampling) at the next step boundary.
  virtual void SubmitScore(ScoreRequest request,
                           std::function<void(absl::StatusOr<ScoreResult>)> on_done) = 0;

  // --- Tokenizer (thread-safe, immediate) -------------------------------------------------
  virtual std::vector<int32_t> Tokenize(const std::string& text, bool add_special_tokens,
                                        bool parse_special) const = 0;
  virtual std::string Detokenize(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_context() const = 0;
  virtual std::string model_name() const = 0;
  virtual std::string model_fingerprint() const = 0;
  // The model's chat template (chat_template.jinja or tokenizer_config.json) applied to OpenAI
  // chat `messages` as transformers' apply_chat_template does, with its bos/eos tokens.
  // FailedPrecondition when the model has no usable template; InvalidArgument from the template
  // itself (raise_exception, bad messages).
  virtual absl::StatusOr<std::string> ApplyChatTemplate(const Json& messages, bool add_generation_prompt) const;

  // --- Adapters -----------------------------------------------------------------------------
  // Load / delete run on the calling thread and never block inference. Merge, unmerge, unload
  // and combine are applied by the engine thread between two steps; `done` runs there.
  // `register_only`: read and validated, weights dropped until a request needs them (requests
  // for an adapter that is not resident wait for its load on loader threads; a load that fails
  // then reaches them through on_done).
  virtual absl::StatusOr<AdapterInfo> LoadAdapter(const std::string& name, const std::string& dir,
                                                  bool register_only) = 0;
  absl::StatusOr<AdapterInfo> LoadAdapter(const std::string& name, const std::string& dir) {
    return LoadAdapter(name, dir, /*register_only=*/false);
  }
  // NotFound; FailedPrecondition while merged. Running requests that use it finish normally.
  virtual absl::Status DeleteAdapter(const std::string& name) = 0;
  virtual absl::StatusOr<AdapterInfo> GetAdapter(const std::string& name) const = 0;
  virtual std::vector<AdapterInfo> ListAdapters() const = 0;
  // done(true) merged; done(false) it already was (no-op). NotFound / FailedPrecondition /
  // InvalidArgument (non-finite merge) otherwise.
  virtual void MergeAdapter(const std::string& name, std::function<void(absl::StatusOr<bool>)> done) = 0;
  virtual void UnmergeAdapter(const std::string& name, std::function<void(absl::Status)> done) = 0;
  // The merged adapters in the order they were merged (the served weights are the checkpoint's
  // plus their deltas composed in this order, so merging them again in it gives the same weights
  // bit for bit). Updated before a merge's or unmerge's `done` runs. Thread-safe.
  virtual std::vector<std::string> MergedAdapters() const = 0;
  // Unmerges everything and deletes every adapter (the checkpoint's weights, bit for bit).
  virtual void UnloadAll(std::function<void(absl::Status)> done) = 0;
  virtual void CombineAdapters(const std::string& name, const std::vector<std::string>& sources,
                               const CombineOptions& options,
                               std::function<void(absl::StatusOr<AdapterInfo>)> done) = 0;
  // Writes the adapter as a PEFT directory into `dir` (must exist and be empty).
  virtual void SaveAdapter(const std::string& name, const std::string& dir,
                           std::function<void(absl::Status)> done) = 0;
  // merge_and_unload of `names` into a Hugging Face checkpoint in `dir` (must exist and be empty).
  virtual void ExportMergedModel(const std::vector<std::string>& names, const std::string& dir,
                                 std::function<void(absl::Status)> done) = 0;

  // --- Lifecycle and observability ----------------------------------------------------------
  virtual EngineStats stats() const = 0;
  // Called on the engine thread after each step, once the step's tokens and finished requests
  // have been delivered (a caller may see its reply before the step is counted).
  virtual void SetStepObserver(StepObserver observer) = 0;
  // Stops admitting work (Unavailable), lets running requests finish until `deadline`, then
  // cancels the rest and joins the engine thread. Idempotent.
  virtual void Shutdown(absl::Time deadline) = 0;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_ENGINE_ENGINE_H_
