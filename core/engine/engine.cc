#include "core/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <atomic>
#include <deque>
#include <map>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/engine/executor.h"
#include "core/engine/generate.h"
#include "core/engine/scheduler.h"
#include "core/engine/sequence.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/tokenizer/chat_template.h"
#include "core/lora/adapter_registry.h"
#include "core/lora/lora_combine.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/tokenizer/tokenizer.h"

namespace loraserve::core {

absl::StatusOr<std::string> ResolveDevice(const std::string& device) {
  std::optional<at::Device> parsed;
  try {
    parsed = at::Device(device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(
        absl::StrCat("device \"", device, "\" is not a device name (cpu, cuda, cuda:N)"));
  }
  if (parsed->is_cpu()) {
    if (parsed->has_index() && parsed->index() != 0) {
      return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": the CPU has no index; use cpu"));
    }
    return std::string("cpu");
  }
  if (!parsed->is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat("device \"", device, "\" is not supported (cpu, cuda, cuda:N)"));
  }
#ifndef LORASERVE_WITH_CUDA
  return absl::FailedPreconditionError(absl::StrCat(
      "device ", device, " requested but this build has no CUDA (the Debian LibTorch is CPU-only); "
      "build the CUDA flavour with `make build-cuda`"));
#else
  const int visible = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  if (visible == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", device, " requested but no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"));
  }
  const int index = parsed->has_index() ? parsed->index() : 0;
  if (index >= visible) {
    return absl::InvalidArgumentError(absl::StrCat("device ", device, " requested but only ", visible,
                                                   " CUDA device(s) are visible (cuda:0 to cuda:", visible - 1, ")"));
  }
  return absl::StrCat("cuda:", index);
#endif
}

namespace {

absl::Status DirMustBeEmpty(const std::string& dir) {
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("directory ", dir, " not found"));
  std::error_code ec;
  if (!std::filesystem::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("directory ", dir, " is not empty"));
  }
  return absl::OkStatus();
}

// Worker threads for slow adapter work (combine, save, export; loads of adapters that requests
// wait for) so neither RPC threads nor the engine loop block on it.
class Worker {
 public:
  explicit Worker(int threads = 1) {
    for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~Worker() { Stop(); }
  // Runs the tasks already posted, then ends the threads. Idempotent; thread-safe.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    std::call_once(joined_, [this] {
      for (std::thread& t : threads_) t.join();
    });
  }
  // False (and `fn` dropped) once Stop() has begun.
  bool Post(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    if (stop_) return false;
    tasks_.push_back(std::move(fn));
    return true;
  }

 private:
  void Loop() {
    c10::InferenceMode guard;
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Worker* w) ABSL_NO_THREAD_SAFETY_ANALYSIS { return w->stop_ || !w->tasks_.empty(); }, this));
        if (tasks_.empty()) return;
        fn = std::move(tasks_.front());
        tasks_.pop_front();
      }
      fn();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
  std::once_flag joined_;
};

class EngineImpl : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& options) : options_(options) {}
  ~EngineImpl() override { Shutdown(absl::Now()); }

  absl::Status Init() {
    if (options_.num_threads > 0) at::set_num_threads(options_.num_threads);
    ModelOptions mo;
    LORASERVE_ASSIGN_OR_RETURN(std::string device, ResolveDevice(options_.device));
    mo.device = at::Device(device);
    if (options_.dtype == "float32" || options_.dtype == "fp32") {
      mo.dtype = at::kFloat;
    } else if (options_.dtype == "bfloat16" || options_.dtype == "bf16") {
      mo.dtype = at::kBFloat16;
    } else if (options_.dtype == "float16" || options_.dtype == "fp16") {
      if (!mo.device.is_cuda()) {
        return absl::InvalidArgumentError(
            "dtype float16 runs on CUDA devices only; on the CPU use bfloat16 (fast here) or float32");
      }
      mo.dtype = at::kHalf;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported dtype \"", options_.dtype, "\" (float32, bfloat16, float16)"));
    }
    if (options_.adapters.load.dtype != "float32" && options_.adapters.load.dtype != "bfloat16") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported adapter dtype \"", options_.adapters.load.dtype,
                                                     "\" (float32, bfloat16)"));
    }
    if (options_.adapter_load_threads < 1) {
      return absl::InvalidArgumentError("adapter_load_threads must be at least 1");
    }
    LORASERVE_ASSIGN_OR_RETURN(model_, Model::Load(options_.model_dir, mo));
    TokenizerOptions to;
    if (model_->config().bos_token_id >= 0) to.bos_id = static_cast<int32_t>(model_->config().bos_token_id);
    if (!model_->config().eos_token_ids.empty()) to.eos_id = static_cast<int32_t>(model_->config().eos_token_ids[0]);
    LORASERVE_ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromFile(JoinPath(options_.model_dir, "tokenizer.json"), to));
    // A missing or unusable chat template only disables chat completions.
    auto chat = LoadModelChatTemplate(options_.model_dir);
    if (chat.ok()) {
      chat_ = std::move(*chat);
    } else {
      chat_status_ = absl::FailedPreconditionError(
          chat.status().code() == absl::StatusCode::kNotFound
              ? "the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja)"
              : absl::StrCat("the model's chat template cannot be used: ", chat.status().message()));
    }
    lora_ = std::make_unique<LoraModel>(model_.get());
    registry_ = std::make_unique<AdapterRegistry>(*model_, lora_->BaseWeightFn(), options_.adapters);
    executor_ = std::make_unique<Executor>(*model_, lora_.get(), options_.kv_budget_bytes);
    scheduler_ = std::make_unique<Scheduler>(
        SchedulerOptions{options_.max_batch_size, options_.max_batch_tokens, options_.max_queue,
                         options_.max_queue_per_adapter, options_.policy},
        executor_->kv());
    // Warm-up forward: the first real request should not pay for allocator and thread-pool start.
    {
      c10::InferenceMode guard;
      std::vector<int32_t> ids = {tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : 0};
      LORASERVE_RETURN_IF_ERROR(model_->Score(ids).status());
    }
    worker_ = std::make_unique<Worker>();
    loader_ = std::make_unique<Worker>(options_.adapter_load_threads);
    thread_ = std::thread([this] { Loop(); });
    absl::MutexLock lock(&mu_);
    ready_ = true;
    return absl::OkStatus();
  }

  // ---------------------------------------------------------------- inference

  absl::StatusOr<std::shared_ptr<RequestHandle>> SubmitGenerate(GenerateRequest request,
                                                                GenerateCallbacks callbacks) override {
    LORASERVE_RETURN_IF_ERROR(ValidateSamplingOptions(request.sampling));
    LORASERVE_RETURN_IF_ERROR(SequenceGenerator::ValidatePrompt(model_->config(), request.prompt_ids));
    if (!callbacks.on_done) return absl::InvalidArgumentError("on_done callback is required");
    {
      absl::MutexLock lock(&mu_);
      if (shutting_down_) return absl::UnavailableError("server is shutting down");
    }
    auto seq = std::make_shared<Sequence>();
    seq->submitted = absl::Now();
    bool loading = false;
    if (!request.adapter.empty()) {
      // Not resident: the request waits for the load on the loader threads (AdapterReady below).
      LORASERVE_ASSIGN_OR_RETURN(seq->adapter, ResidentOrLoad(request.adapter, [this, seq](AdapterResult a) {
                                   SubmitLoaded(seq, std::move(a));
                                 }, &loading));
    }
    seq->adapter_name = request.adapter;
    seq->tenant = request.tenant;
    seq->weight = request.tenant_weight;
    seq->adapter_key = seq->adapter.get();
    seq->deadline = request.deadline;
    seq->prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
    seq->generator = std::make_unique<SequenceGenerator>(model_->config(), *tokenizer_,
                                                         request.prompt_ids, request.sampling);
    seq->request = std::move(request);
    seq->callbacks = std::move(callbacks);
    if (loading) {
      // SubmitLoaded runs once the load ends; it may not touch `seq` before this point.
      seq->ready_to_submit.Notify();
      return std::shared_ptr<RequestHandle>(seq);
    }
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("server is shutting down");
    LORASERVE_RETURN_IF_ERROR(scheduler_->Submit(seq, seq->submitted));
    return std::shared_ptr<RequestHandle>(seq);
  }

  void SubmitScore(ScoreRequest request, std::function<void(absl::StatusOr<ScoreResult>)> on_done) override {
    if (request.token_ids.empty()) return on_done(absl::InvalidArgumentError("no token ids to score"));
    if (static_cast<int64_t>(request.token_ids.size()) > model_->config().max_position_embeddings) {
      return on_done(absl::InvalidArgumentError(absl::StrCat(
          request.token_ids.size(), " tokens exceed the model's context of ", model_->config().max_position_embeddings)));
    }
    if (request.top_logprobs < 0 || request.top_logprobs > kMaxTopLogprobs) {
      return on_done(absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "]")));
    }
    {
      absl::MutexLock lock(&mu_);
      if (shutting_down_) return on_done(ShuttingDown());
    }
    if (request.adapter.empty() && model_->ScoresInPlainLoops(static_cast<int64_t>(request.token_ids.size())) &&
        RunInlineIfIdle([&] { on_done(executor_->Score(request, nullptr)); })) {
      return;
    }
    auto done = std::make_shared<std::function<void(absl::StatusOr<ScoreResult>)>>(std::move(on_done));
    auto request_ptr = std::make_shared<ScoreRequest>(std::move(request));
    auto post = [this, request_ptr, done](AdapterResult adapter) {
      if (!adapter.ok()) return (*done)(adapter.status());
      if (!PostTask([this, request_ptr, adapter = *std::move(adapter), done]() {
            (*done)(executor_->Score(*request_ptr, adapter));
          })) {
        (*done)(ShuttingDown());
      }
    };
    if (request_ptr->adapter.empty()) return post(std::shared_ptr<const LoraAdapter>());
    bool loading = false;
    AdapterResult adapter = ResidentOrLoad(request_ptr->adapter, post, &loading);
    if (!loading) post(std::move(adapter));
  }

  std::vector<int32_t> Tokenize(const std::string& text, bool add_special_tokens, bool parse_special) const override {
    EncodeOptions o;
    o.add_special_tokens = add_special_tokens;
    o.parse_special = parse_special;
    return tokenizer_->Encode(text, o);
  }
  std::string Detokenize(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    return tokenizer_->Decode(ids, skip_special_tokens);
  }
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t max_context() const override { return model_->config().max_position_embeddings; }
  std::string model_name() const override { return model_->name(); }
  absl::StatusOr<std::string> ApplyChatTemplate(const Json& messages, bool add_generation_prompt) const override {
    if (!chat_.has_value()) return chat_status_;
    return chat_->chat_template.Render(Json{{"messages", messages}, {"add_generation_prompt", add_generation_prompt},
                                            {"bos_token", chat_->bos_token}, {"eos_token", chat_->eos_token}});
  }
  std::string model_fingerprint() const override { return model_->fingerprint(); }

  // ---------------------------------------------------------------- adapters

  absl::StatusOr<AdapterInfo> LoadAdapter(const std::string& name, const std::string& dir,
                                          bool register_only) override {
    return registry_->Load(name, dir, register_only);
  }
  absl::Status DeleteAdapter(const std::string& name) override { return registry_->Delete(name); }
  absl::StatusOr<AdapterInfo> GetAdapter(const std::string& name) const override { return registry_->Info(name); }
  std::vector<AdapterInfo> ListAdapters() const override { return registry_->List(); }

  void MergeAdapter(const std::string& name, std::function<void(absl::StatusOr<bool>)> done) override {
    auto cb = std::make_shared<std::function<void(absl::StatusOr<bool>)>>(std::move(done));
    // Loaded here (the caller's thread may block on the files), not on the engine thread.
    auto adapter = registry_->Get(name);
    if (!adapter.ok()) return (*cb)(adapter.status());
    if (!PostTask([this, name, adapter = *adapter, cb] {
          if (!registry_->Contains(name)) {
            return (*cb)(absl::NotFoundError(absl::StrCat("adapter ", name, " not found")));
          }
          absl::StatusOr<bool> merged = lora_->Merge(adapter);
          // Pinned with the very object merged (the entry may have been evicted or reloaded
          // since the Get above).
          if (merged.ok() && *merged) (void)registry_->PinAs(name, adapter);
          PublishMerged();
          (*cb)(merged);
        })) {
      (*cb)(ShuttingDown());
    }
  }

  void UnmergeAdapter(const std::string& name, std::function<void(absl::Status)> done) override {
    auto cb = std::make_shared<std::function<void(absl::Status)>>(std::move(done));
    if (!PostTask([this, name, cb] {
          if (!registry_->Contains(name)) {
            return (*cb)(absl::NotFoundError(absl::StrCat("adapter ", name, " not found")));
          }
          absl::Status s = lora_->Unmerge(name);
          if (s.ok()) (void)registry_->SetPinned(name, false);
          PublishMerged();
          (*cb)(s);
        })) {
      (*cb)(ShuttingDown());
    }
  }

  std::vector<std::string> MergedAdapters() const override {
    absl::MutexLock lock(&merged_mu_);
    return merged_names_;
  }

  void UnloadAll(std::function<void(absl::Status)> done) override {
    auto cb = std::make_shared<std::function<void(absl::Status)>>(std::move(done));
    if (!PostTask([this, cb] {
          lora_->UnmergeAll();
          registry_->Clear();
          PublishMerged();
          (*cb)(absl::OkStatus());
        })) {
      (*cb)(ShuttingDown());
    }
  }

  void CombineAdapters(const std::string& name, const std::vector<std::string>& sources,
                       const CombineOptions& options,
                       std::function<void(absl::StatusOr<AdapterInfo>)> done) override {
    std::vector<std::shared_ptr<const LoraAdapter>> adapters;
    for (const std::string& s : sources) {
      auto a = registry_->Get(s);
      if (!a.ok()) return done(a.status());
      adapters.push_back(*a);
    }
    if (registry_->Contains(name)) return done(absl::AlreadyExistsError(absl::StrCat("adapter ", name, " already exists")));
    auto task = [this, name, adapters, options, done] {
      auto combined = core::CombineAdapters(name, adapters, options, *model_, lora_->BaseWeightFn(),
                                            options_.adapters.load);
      if (!combined.ok()) return done(combined.status());
      done(registry_->Add(*combined));
    };
    if (!worker_->Post(std::move(task))) done(ShuttingDown());
  }

  void SaveAdapter(const std::string& name, const std::string& dir, std::function<void(absl::Status)> done) override {
    auto adapter = registry_->Get(name);
    if (!adapter.ok()) return done(adapter.status());
    if (absl::Status s = DirMustBeEmpty(dir); !s.ok()) return done(s);
    if (!worker_->Post([adapter = *adapter, dir, done] { done(core::SaveAdapter(*adapter, dir)); })) {
      done(ShuttingDown());
    }
  }

  void ExportMergedModel(const std::vector<std::string>& names, const std::string& dir,
                         std::function<void(absl::Status)> done) override {
    std::vector<std::shared_ptr<const LoraAdapter>> adapters;
    for (const std::string& n : names) {
      auto a = registry_->Get(n);
      if (!a.ok()) return done(a.status());
      adapters.push_back(*a);
    }
    if (absl::Status s = DirMustBeEmpty(dir); !s.ok()) return done(s);
    // ExportMerged reads only the checkpoint tensors and immutable adapters: safe off the engine thread.
    if (!worker_->Post([this, adapters, dir, done] {
          done(lora_->ExportMerged(adapters, dir, options_.model_dir));
        })) {
      done(ShuttingDown());
    }
  }

  // ---------------------------------------------------------------- lifecycle

  EngineStats stats() const override {
    absl::MutexLock lock(&mu_);
    EngineStats s = stats_;
    s.queue_depth = scheduler_->waiting();
    s.preemptions = scheduler_->preemptions();
    s.ready = ready_ && !shutting_down_;
    s.kv_budget_bytes = options_.kv_budget_bytes;
    s.adapter_evictions = registry_->evictions();
    s.adapter_bytes_resident = registry_->resident_bytes();
    s.adapter_loads = registry_->reloads();
    s.adapter_load_seconds = registry_->reload_seconds();
    s.adapters = registry_->Counts();
    s.adapter_misses = adapter_misses_.load();
    s.adapter_load_waiting = load_waiting_.load();
    return s;
  }

  void SetStepObserver(StepObserver observer) override {
    absl::MutexLock lock(&mu_);
    observer_ = std::move(observer);
  }

  void Shutdown(absl::Time deadline) override {
    {
      absl::MutexLock lock(&mu_);
      if (!shutting_down_) {
        shutting_down_ = true;
        drain_deadline_ = deadline;
      }
    }
    // Concurrent Shutdown calls (a signal handler's thread and a destructor) both return once
    // everything has stopped.
    std::call_once(stopped_, [this] {
      if (thread_.joinable()) thread_.join();
      if (loader_ != nullptr) loader_->Stop();
      if (worker_ != nullptr) worker_->Stop();
    });
  }

 private:
  // Engine thread, after every change of the merge state.
  void PublishMerged() {
    std::vector<std::string> names = lora_->MergedNames();
    absl::MutexLock lock(&merged_mu_);
    merged_names_ = std::move(names);
  }

  // On an idle engine (nothing queued, running or posted) runs `fn` on the calling thread, holding
  // exec_mu_ as the engine thread does for its work, and returns true; otherwise (or while the
  // engine thread holds exec_mu_) returns false without running it. Only for work bounded to a
  // fraction of a millisecond: the idle Score of a short request (issue 13 item 8), which saves the
  // two thread hand-offs of PostTask; a request that arrives meanwhile waits at most that long.
  template <typename Fn>
  bool RunInlineIfIdle(Fn&& fn) {
    {
      absl::MutexLock lock(&mu_);
      if (shutting_down_ || !ready_ || !tasks_.empty() || scheduler_->waiting() > 0 || scheduler_->running() > 0) {
        return false;
      }
    }
    if (!exec_mu_.TryLock()) return false;
    {
      c10::InferenceMode guard;
      fn();
    }
    exec_mu_.Unlock();
    return true;
  }

  // Queues `task` for the engine thread between two steps. After the engine loop has ended the
  // task cannot run: returns false (the caller answers Unavailable).
  bool PostTask(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    if (loop_exited_) return false;
    tasks_.push_back(std::move(task));
    return true;
  }
  static absl::Status ShuttingDown() { return absl::UnavailableError("server is shutting down"); }

  // ---------------------------------------------------------------- adapter loads for requests

  using AdapterResult = absl::StatusOr<std::shared_ptr<const LoraAdapter>>;
  using AdapterReady = std::function<void(AdapterResult)>;

  // The adapter when resident (`*loading` false, `ready` dropped). Otherwise (evicted, or
  // registered only) `*loading` is set, the call returns nullptr at once and `ready` runs on a
  // loader thread once the load ends: requests for one adapter share its load and wait in their
  // own queue, no other adapter's requests wait behind them, and neither the engine thread nor
  // the caller's thread reads files. NotFound for an unknown adapter; ResourceExhausted when
  // --max_queue / --max_queue_per_adapter requests already wait for loads; Unavailable once the
  // loader has stopped.
  AdapterResult ResidentOrLoad(const std::string& name, AdapterReady ready, bool* loading) {
    *loading = false;
    AdapterResult a = registry_->GetIfResident(name);
    if (!a.ok() || *a != nullptr) return a;
    absl::MutexLock lock(&load_mu_);
    auto it = load_waiters_.find(name);
    const size_t waiting = it == load_waiters_.end() ? 0 : it->second.size();
    if (load_waiting_.load() >= options_.max_queue) {
      return absl::ResourceExhaustedError(
          absl::StrCat("request queue full (", load_waiting_.load(), " waiting for adapter loads)"));
    }
    if (static_cast<int>(waiting) >= options_.max_queue_per_adapter) {
      return absl::ResourceExhaustedError(
          absl::StrCat("queue for adapter \"", name, "\" full (", waiting, " waiting for its load)"));
    }
    if (waiting == 0 && !loader_->Post([this, name] { FinishLoad(name); })) return ShuttingDown();
    load_waiters_[name].push_back(std::move(ready));
    ++load_waiting_;
    ++adapter_misses_;
    *loading = true;
    return std::shared_ptr<const LoraAdapter>();
  }

  // Loader thread: loads `name` (blocking) and hands the result to every request waiting for it.
  void FinishLoad(const std::string& name) {
    c10::InferenceMode guard;
    AdapterResult adapter = registry_->Get(name);
    std::vector<AdapterReady> waiters;
    {
      absl::MutexLock lock(&load_mu_);
      auto it = load_waiters_.find(name);
      if (it != load_waiters_.end()) {
        waiters = std::move(it->second);
        load_waiters_.erase(it);
      }
    }
    for (AdapterReady& w : waiters) w(adapter);
    // Counted down only now: the engine loop does not end while a request is between its load
    // and the scheduler.
    load_waiting_ -= static_cast<int64_t>(waiters.size());
  }

  // Loader thread: a generation whose adapter has loaded joins the scheduler (or fails).
  void SubmitLoaded(const std::shared_ptr<Sequence>& seq, AdapterResult adapter) {
    seq->ready_to_submit.WaitForNotification();
    absl::Status s = adapter.status();
    if (s.ok()) {
      seq->adapter = *std::move(adapter);
      seq->adapter_key = seq->adapter.get();
      absl::MutexLock lock(&mu_);
      // While draining, requests accepted before the drain still run.
      s = loop_exited_ ? ShuttingDown() : scheduler_->Submit(seq, seq->submitted);
    }
    if (!s.ok()) Finish(seq, s);
  }

  // Ends a sequence that has left the scheduler and reports it.
  void Finish(const std::shared_ptr<Sequence>& s, absl::StatusOr<GenerationResult> result) {
    RequestStats st;
    const absl::Time now = absl::Now();
    st.queue_time = (s->scheduled == absl::InfinitePast() ? now : s->scheduled) - s->submitted;
    st.time_to_first_token = s->first_token == absl::InfinitePast() ? absl::ZeroDuration() : s->first_token - s->submitted;
    st.total = now - s->submitted;
    st.prompt_tokens = static_cast<int64_t>(s->request.prompt_ids.size());
    st.completion_tokens = static_cast<int64_t>(
        result.ok() ? result->tokens.size() : s->generator->result().tokens.size());
    s->callbacks.on_done(std::move(result), st);
  }
  void Finish(const std::shared_ptr<ScheduledRequest>& r, absl::StatusOr<GenerationResult> result) {
    Finish(std::static_pointer_cast<Sequence>(r), std::move(result));
  }

  void Loop() {
    c10::InferenceMode guard;
    while (true) {
      std::deque<std::function<void()>> tasks;
      bool draining_expired = false;
      bool stop = false;
      {
        absl::MutexLock lock(&mu_);
        auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !tasks_.empty() || scheduler_->waiting() > 0 || scheduler_->running() > 0 || shutting_down_;
        };
        mu_.Await(absl::Condition(&has_work));
        // A small batch waits briefly for company (prefills batch better together).
        if (scheduler_->running() == 0 && scheduler_->waiting() > 0 &&
            scheduler_->waiting() < options_.max_batch_size && tasks_.empty() &&
            options_.max_wait > absl::ZeroDuration() && !shutting_down_) {
          auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return scheduler_->waiting() >= options_.max_batch_size || shutting_down_ || !tasks_.empty();
          };
          mu_.AwaitWithTimeout(absl::Condition(&full), options_.max_wait);
        }
        tasks.swap(tasks_);
        if (shutting_down_) {
          draining_expired = absl::Now() >= drain_deadline_;
          if (scheduler_->running() == 0 && (scheduler_->waiting() == 0 || draining_expired) && tasks.empty()) {
            if (load_waiting_.load() == 0 || draining_expired) {
              stop = true;
            } else {
              // Requests still wait for their adapters' loads: they join the scheduler soon.
              auto arrived = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                return !tasks_.empty() || scheduler_->waiting() > 0;
              };
              mu_.AwaitWithTimeout(absl::Condition(&arrived), absl::Milliseconds(1));
            }
          }
        }
      }
      {
        absl::MutexLock exec(&exec_mu_);
        for (auto& t : tasks) t();  // adapter mutations and scores, between two steps
        if (stop) break;
        Step(draining_expired);
      }
      absl::MutexLock lock(&mu_);
      stats_.running = scheduler_->running();
      stats_.kv_bytes_reserved = executor_->kv()->bytes_reserved();
    }
    // Tasks posted while the loop was ending still run (they only touch adapter state); later ones
    // are refused by PostTask.
    std::deque<std::function<void()>> late;
    {
      absl::MutexLock lock(&mu_);
      loop_exited_ = true;
      late.swap(tasks_);
    }
    {
      absl::MutexLock exec(&exec_mu_);
      for (auto& t : late) t();
    }
    // Fail whatever is left (only when the drain deadline passed).
    for (auto& r : scheduler_->TakeAll()) {
      Finish(r, absl::UnavailableError("server shut down before the request finished"));
    }
  }

  // One step: the scheduler picks the rows, the executor runs them, the results go out.
  void Step(bool draining_expired) {
    StepPlan plan = scheduler_->NextBatch(absl::Now(), draining_expired);
    for (auto& [r, why] : plan.stopped) Finish(r, why);
    if (plan.rows.empty()) return;
    const absl::Time t0 = absl::Now();
    auto outcomes = executor_->Step(plan.rows);
    const absl::Duration step_time = absl::Now() - t0;
    if (!outcomes.ok()) {
      for (const BatchRow& row : plan.rows) {
        scheduler_->Complete(*row.request);
        Finish(row.request, outcomes.status());
      }
      return;
    }
    int64_t prompt_tokens = 0, generated = 0;
    for (size_t i = 0; i < plan.rows.size(); ++i) {
      const BatchRow& row = plan.rows[i];
      auto s = std::static_pointer_cast<Sequence>(row.request);
      if (s->prefilling) prompt_tokens += row.count;
      absl::StatusOr<std::optional<TokenEvent>>& event = (*outcomes)[i];
      if (!event.ok()) {
        scheduler_->Complete(*s);
        Finish(s, event.status());
        continue;
      }
      if (!event->has_value()) {  // more prompt chunks to go
        scheduler_->Advance(row, /*sampled=*/false);
        continue;
      }
      ++generated;
      if (s->first_token == absl::InfinitePast()) s->first_token = absl::Now();
      if (s->callbacks.on_token) s->callbacks.on_token(**event);
      if (s->generator->finished()) {
        scheduler_->Complete(*s);
        Finish(s, std::move(s->generator->result()));
      } else {
        scheduler_->Advance(row, /*sampled=*/true);
      }
    }
    StepObserver observer;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.steps;
      if (plan.distinct_adapters > 1) ++stats_.multi_adapter_steps;
      stats_.tokens_in += prompt_tokens;
      stats_.tokens_out += generated;
      stats_.running = scheduler_->running();
      stats_.kv_bytes_reserved = executor_->kv()->bytes_reserved();
      stats_.last_batch_size = static_cast<int64_t>(plan.rows.size());
      stats_.last_batch_adapters = plan.distinct_adapters;
      observer = observer_;
    }
    if (observer) observer(static_cast<int>(plan.rows.size()), plan.distinct_adapters,
                           static_cast<int>(plan.new_tokens), step_time);
  }

  const EngineOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ModelChatTemplate> chat_;
  absl::Status chat_status_;
  std::unique_ptr<LoraModel> lora_;
  std::unique_ptr<AdapterRegistry> registry_;
  // lora_->MergedNames() for other threads (MergedAdapters); written by PublishMerged.
  mutable absl::Mutex merged_mu_;
  std::vector<std::string> merged_names_ ABSL_GUARDED_BY(merged_mu_);
  std::unique_ptr<Executor> executor_;    // owns the KV cache; engine thread
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Worker> worker_;  // created in Init, stopped (never reset) by Shutdown
  std::unique_ptr<Worker> loader_;  // adapter loads that requests wait for; as worker_
  absl::Mutex load_mu_;
  std::map<std::string, std::vector<AdapterReady>> load_waiters_ ABSL_GUARDED_BY(load_mu_);
  std::atomic<int64_t> load_waiting_{0};  // requests waiting for loads (or just loaded)
  std::atomic<int64_t> adapter_misses_{0};
  std::once_flag stopped_;
  std::thread thread_;

  // The model, the executor and the adapter merge state: held by the engine thread while it runs
  // tasks and steps, and by RunInlineIfIdle. Never taken while holding mu_.
  absl::Mutex exec_mu_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_exited_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_);
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  StepObserver observer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::string> Engine::ApplyChatTemplate(const Json&, bool) const {
  return absl::FailedPreconditionError("this engine does not render chat templates");
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto engine = std::make_unique<EngineImpl>(options);
  LORASERVE_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace loraserve::core
