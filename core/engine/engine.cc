#include "core/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/engine/generate.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/lora/adapter_registry.h"
#include "core/lora/lora_combine.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/tokenizer/tokenizer.h"

namespace loraserve::core {
namespace {

// One generation request while it waits or runs.
struct Sequence : public RequestHandle {
  int64_t id = 0;
  GenerateRequest request;
  GenerateCallbacks callbacks;
  std::shared_ptr<const LoraAdapter> adapter;  // held for the whole request (safe under delete)
  std::unique_ptr<SequenceGenerator> generator;
  // Tokens the model has not seen yet: the prompt (maybe several chunks), after that the last
  // sampled token. After a preemption: prompt + everything generated, recomputed.
  std::vector<int32_t> unfed;
  bool prefilling = true;
  std::atomic<bool> cancelled{false};
  absl::Time submitted;
  absl::Time scheduled = absl::InfinitePast();
  absl::Time first_token = absl::InfinitePast();

  void Cancel() override { cancelled = true; }
  const std::string& adapter_name() const { return request.adapter; }
};

absl::Status DirMustBeEmpty(const std::string& dir) {
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("directory ", dir, " not found"));
  std::error_code ec;
  if (!std::filesystem::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("directory ", dir, " is not empty"));
  }
  return absl::OkStatus();
}

// A single worker thread for slow adapter work (combine, save, export) so neither RPC threads
// nor the engine loop block on it.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) {}
  ~Worker() { Stop(); }
  // Runs the tasks already posted, then ends the thread. Idempotent; thread-safe.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    std::call_once(joined_, [this] { thread_.join(); });
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
  std::thread thread_;
  std::once_flag joined_;
};

class EngineImpl : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& options) : options_(options) {}
  ~EngineImpl() override { Shutdown(absl::Now()); }

  absl::Status Init() {
    if (options_.num_threads > 0) at::set_num_threads(options_.num_threads);
    ModelOptions mo;
    if (options_.dtype == "float32" || options_.dtype == "fp32") {
      mo.dtype = at::kFloat;
    } else if (options_.dtype == "bfloat16" || options_.dtype == "bf16") {
      mo.dtype = at::kBFloat16;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", options_.dtype, "\" (float32, bfloat16)"));
    }
    LORASERVE_ASSIGN_OR_RETURN(mo.device, CallTorch("parsing device", [&] { return at::Device(options_.device); }));
    if (mo.device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError("device " + options_.device + " requested but this LibTorch has no CUDA");
    }
    LORASERVE_ASSIGN_OR_RETURN(model_, Model::Load(options_.model_dir, mo));
    TokenizerOptions to;
    if (model_->config().bos_token_id >= 0) to.bos_id = static_cast<int32_t>(model_->config().bos_token_id);
    if (!model_->config().eos_token_ids.empty()) to.eos_id = static_cast<int32_t>(model_->config().eos_token_ids[0]);
    LORASERVE_ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromFile(JoinPath(options_.model_dir, "tokenizer.json"), to));
    lora_ = std::make_unique<LoraModel>(model_.get());
    registry_ = std::make_unique<AdapterRegistry>(*model_, lora_->BaseWeightFn(), options_.adapters);
    cache_ = std::make_unique<KvCache>(model_->config(), model_->options(), options_.kv_budget_bytes);
    // Warm-up forward: the first real request should not pay for allocator and thread-pool start.
    {
      c10::InferenceMode guard;
      std::vector<int32_t> ids = {tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : 0};
      LORASERVE_RETURN_IF_ERROR(model_->Score(ids).status());
    }
    worker_ = std::make_unique<Worker>();
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
    auto seq = std::make_shared<Sequence>();
    if (!request.adapter.empty()) {
      LORASERVE_ASSIGN_OR_RETURN(seq->adapter, registry_->Get(request.adapter));
    }
    seq->submitted = absl::Now();
    seq->unfed = request.prompt_ids;
    seq->generator = std::make_unique<SequenceGenerator>(model_->config(), *tokenizer_,
                                                         request.prompt_ids, request.sampling);
    seq->request = std::move(request);
    seq->callbacks = std::move(callbacks);
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return absl::UnavailableError("server is shutting down");
    if (waiting_ >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat("request queue full (", waiting_, " waiting)"));
    }
    auto& q = queues_[seq->adapter_name()];
    if (static_cast<int>(q.size()) >= options_.max_queue_per_adapter) {
      return absl::ResourceExhaustedError(absl::StrCat("queue for adapter \"", seq->adapter_name(),
                                                       "\" full (", q.size(), " waiting)"));
    }
    seq->id = next_id_++;
    q.push_back(seq);
    ++waiting_;
    return std::shared_ptr<RequestHandle>(seq);
  }

  void SubmitScore(ScoreRequest request, std::function<void(absl::StatusOr<ScoreResult>)> on_done) override {
    std::shared_ptr<const LoraAdapter> adapter;
    if (!request.adapter.empty()) {
      auto a = registry_->Get(request.adapter);
      if (!a.ok()) return on_done(a.status());
      adapter = *a;
    }
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
    auto done = std::make_shared<std::function<void(absl::StatusOr<ScoreResult>)>>(std::move(on_done));
    if (!PostTask([this, request = std::move(request), adapter, done]() { (*done)(RunScore(request, adapter)); })) {
      (*done)(ShuttingDown());
    }
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
  std::string model_fingerprint() const override { return model_->fingerprint(); }

  // ---------------------------------------------------------------- adapters

  absl::StatusOr<AdapterInfo> LoadAdapter(const std::string& name, const std::string& dir) override {
    return registry_->Load(name, dir);
  }
  absl::Status DeleteAdapter(const std::string& name) override { return registry_->Delete(name); }
  absl::StatusOr<AdapterInfo> GetAdapter(const std::string& name) const override { return registry_->Info(name); }
  std::vector<AdapterInfo> ListAdapters() const override { return registry_->List(); }

  void MergeAdapter(const std::string& name, std::function<void(absl::StatusOr<bool>)> done) override {
    auto cb = std::make_shared<std::function<void(absl::StatusOr<bool>)>>(std::move(done));
    if (!PostTask([this, name, cb] {
          auto adapter = registry_->Get(name);
          if (!adapter.ok()) return (*cb)(adapter.status());
          absl::StatusOr<bool> merged = lora_->Merge(*adapter);
          if (merged.ok()) (void)registry_->SetPinned(name, true);
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
          (*cb)(s);
        })) {
      (*cb)(ShuttingDown());
    }
  }

  void UnloadAll(std::function<void(absl::Status)> done) override {
    auto cb = std::make_shared<std::function<void(absl::Status)>>(std::move(done));
    if (!PostTask([this, cb] {
          lora_->UnmergeAll();
          registry_->Clear();
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
    s.queue_depth = waiting_;
    s.ready = ready_ && !shutting_down_;
    s.kv_budget_bytes = options_.kv_budget_bytes;
    s.adapter_evictions = registry_->evictions();
    s.adapter_bytes_resident = registry_->resident_bytes();
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
      if (worker_ != nullptr) worker_->Stop();
    });
  }

 private:
  // Queues `task` for the engine thread between two steps. After the engine loop has ended the
  // task cannot run: returns false (the caller answers Unavailable).
  bool PostTask(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    if (loop_exited_) return false;
    tasks_.push_back(std::move(task));
    return true;
  }
  static absl::Status ShuttingDown() { return absl::UnavailableError("server is shutting down"); }

  absl::StatusOr<ScoreResult> RunScore(const ScoreRequest& request,
                                       const std::shared_ptr<const LoraAdapter>& adapter) {
    LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits, lora_->Score(request.token_ids, adapter));
    return CallTorch("scoring", [&]() {
      ScoreResult r;
      at::Tensor cpu = logits.to(at::kCPU).contiguous();
      r.num_tokens = cpu.size(0);
      r.vocab_size = cpu.size(1);
      if (request.full_logits) {
        r.logits.assign(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
      }
      at::Tensor logp = at::log_softmax(cpu, -1);
      for (int64_t t = 0; t + 1 < r.num_tokens; ++t) {
        r.token_logprobs.push_back(logp[t][request.token_ids[t + 1]].item<float>());
      }
      if (request.top_logprobs > 0) {
        auto [values, indices] = at::topk(logp, request.top_logprobs, -1);
        for (int64_t t = 0; t < r.num_tokens; ++t) {
          std::vector<TokenLogprob> row;
          for (int64_t k = 0; k < request.top_logprobs; ++k) {
            row.push_back({static_cast<int32_t>(indices[t][k].item<int64_t>()), values[t][k].item<float>()});
          }
          r.top.push_back(std::move(row));
        }
      }
      return r;
    });
  }

  void DropRunning(const std::shared_ptr<Sequence>& s) {
    running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  }

  // Ends a sequence: frees its KV memory and reports.
  void Finish(const std::shared_ptr<Sequence>& s, absl::StatusOr<GenerationResult> result) {
    cache_->RemoveSequence(s->id);
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

  // Status for a sequence that must stop now (cancelled, past deadline, shutting down), or OK.
  static absl::Status StopReason(const Sequence& s, absl::Time now, bool draining_expired) {
    if (s.cancelled) return absl::CancelledError("request cancelled");
    if (now > s.request.deadline) return absl::DeadlineExceededError("request deadline exceeded");
    if (draining_expired) return absl::UnavailableError("server shut down before the request finished");
    return absl::OkStatus();
  }

  // Moves waiting requests into the running set: round-robin over adapters (fairness: a hot
  // adapter cannot starve the others), within the batch-size limit and the KV budget.
  void Admit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    while (static_cast<int>(running_.size()) < options_.max_batch_size && waiting_ > 0) {
      // Adapters with waiting requests, starting after the one admitted last.
      std::vector<std::string> order;
      for (const auto& [name, q] : queues_) {
        if (!q.empty()) order.push_back(name);
      }
      if (order.empty()) break;
      std::rotate(order.begin(), std::upper_bound(order.begin(), order.end(), last_admitted_adapter_),
                  order.end());
      for (const std::string& name : order) {
        if (static_cast<int>(running_.size()) >= options_.max_batch_size) break;
        auto& q = queues_[name];
        std::shared_ptr<Sequence> s = q.front();
        // KV admission: a prompt that does not fit beside the running sequences waits.
        const int64_t need = static_cast<int64_t>(s->unfed.size() + 1) * cache_->bytes_per_token();
        if (options_.kv_budget_bytes > 0 && !running_.empty() &&
            cache_->bytes_reserved() + need > options_.kv_budget_bytes) {
          return;
        }
        q.pop_front();
        --waiting_;
        if (s->scheduled == absl::InfinitePast()) s->scheduled = now;
        (void)cache_->AddSequence(s->id);
        running_.push_back(s);
        last_admitted_adapter_ = name;
      }
    }
    for (auto it = queues_.begin(); it != queues_.end();) {
      it = it->second.empty() ? queues_.erase(it) : std::next(it);
    }
  }

  // Preempts the most recently admitted running sequence other than `keep`: its KV memory is
  // freed and it goes back to the front of its queue, to be recomputed from prompt + generated.
  bool Preempt(const Sequence* keep) {
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      if (it->get() == keep) continue;
      std::shared_ptr<Sequence> s = *it;
      running_.erase(std::next(it).base());
      cache_->RemoveSequence(s->id);
      s->unfed = s->request.prompt_ids;
      const auto& gen = s->generator->result().tokens;
      s->unfed.insert(s->unfed.end(), gen.begin(), gen.end());
      s->prefilling = true;
      {
        absl::MutexLock lock(&mu_);
        queues_[s->adapter_name()].push_front(s);
        ++waiting_;
        ++stats_.preemptions;
      }
      return true;
    }
    return false;
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
          return !tasks_.empty() || waiting_ > 0 || !running_.empty() || shutting_down_;
        };
        mu_.Await(absl::Condition(&has_work));
        // A small batch waits briefly for company (prefills batch better together).
        if (running_.empty() && waiting_ > 0 && waiting_ < options_.max_batch_size && tasks_.empty() &&
            options_.max_wait > absl::ZeroDuration() && !shutting_down_) {
          auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return waiting_ >= options_.max_batch_size || shutting_down_ || !tasks_.empty();
          };
          mu_.AwaitWithTimeout(absl::Condition(&full), options_.max_wait);
        }
        tasks.swap(tasks_);
        if (shutting_down_) {
          draining_expired = absl::Now() >= drain_deadline_;
          if (running_.empty() && (waiting_ == 0 || draining_expired) && tasks.empty()) stop = true;
        }
        if (!stop) Admit();
      }
      for (auto& t : tasks) t();  // adapter mutations and scores, between two steps
      if (stop) break;
      Step(draining_expired);
      absl::MutexLock lock(&mu_);
      stats_.running = static_cast<int64_t>(running_.size());
      stats_.kv_bytes_reserved = cache_->bytes_reserved();
    }
    // Tasks posted while the loop was ending still run (they only touch adapter state); later ones
    // are refused by PostTask.
    std::deque<std::function<void()>> late;
    {
      absl::MutexLock lock(&mu_);
      loop_exited_ = true;
      late.swap(tasks_);
    }
    for (auto& t : late) t();
    // Fail whatever is left (only when the drain deadline passed).
    std::vector<std::shared_ptr<Sequence>> left = running_;
    running_.clear();
    {
      absl::MutexLock lock(&mu_);
      for (auto& [name, q] : queues_) {
        for (auto& s : q) left.push_back(s);
      }
      queues_.clear();
      waiting_ = 0;
    }
    for (auto& s : left) Finish(s, absl::UnavailableError("server shut down before the request finished"));
  }

  void Step(bool draining_expired) {
    const absl::Time now = absl::Now();
    // Drop sequences that must stop.
    for (size_t i = 0; i < running_.size();) {
      absl::Status why = StopReason(*running_[i], now, draining_expired);
      if (why.ok()) {
        ++i;
        continue;
      }
      std::shared_ptr<Sequence> s = running_[i];
      running_.erase(running_.begin() + static_cast<long>(i));
      Finish(s, why);
    }
    {
      absl::MutexLock lock(&mu_);
      const absl::Time t = absl::Now();
      for (auto& [name, q] : queues_) {
        for (auto it = q.begin(); it != q.end();) {
          absl::Status why = StopReason(**it, t, draining_expired);
          if (why.ok()) {
            ++it;
            continue;
          }
          expired_.push_back({*it, why});
          it = q.erase(it);
          --waiting_;
        }
      }
    }
    for (auto& [s, why] : expired_) Finish(s, why);
    expired_.clear();
    if (running_.empty()) return;

    // Choose the rows of this step.
    std::vector<std::shared_ptr<Sequence>> rows = running_;
    if (options_.policy == BatchPolicy::kSingleAdapter) {
      // One adapter per step, round robin over the running adapters.
      std::set<std::string> names;
      for (auto& s : rows) names.insert(s->adapter_name());
      auto next = names.upper_bound(single_last_);
      const std::string pick = next == names.end() ? *names.begin() : *next;
      single_last_ = pick;
      rows.erase(std::remove_if(rows.begin(), rows.end(), [&](auto& s) { return s->adapter_name() != pick; }), rows.end());
    }
    // Decode rows first (one token each), then prefill chunks within the token budget. Rows are
    // ordered by adapter so each adapter's rows are contiguous (one GEMM pair per adapter).
    std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
      if (a->prefilling != b->prefilling) return !a->prefilling;
      return a->adapter.get() < b->adapter.get();
    });
    int64_t budget = options_.max_batch_tokens;
    std::vector<std::shared_ptr<Sequence>> batch_seqs;
    std::vector<SequenceInput> batch;
    std::vector<size_t> chunk;
    for (auto& s : rows) {
      if (budget <= 0) break;
      if (std::find(running_.begin(), running_.end(), s) == running_.end()) continue;  // preempted
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(s->unfed.size()), budget);
      // Make sure the KV cache can take it; preempt the newest other sequences if not.
      absl::Status reserved;
      while (!(reserved = cache_->Reserve(s->id, cache_->Length(s->id) + n)).ok()) {
        if (!Preempt(s.get())) break;
      }
      if (!reserved.ok()) {
        // Even alone it does not fit the budget: fail it rather than loop forever.
        DropRunning(s);
        Finish(s, absl::ResourceExhaustedError(absl::StrCat(
                      "the request needs more KV cache than the server's budget: ", reserved.message())));
        continue;
      }
      batch_seqs.push_back(s);
      batch.push_back({s->id, std::vector<int32_t>(s->unfed.begin(), s->unfed.begin() + n)});
      chunk.push_back(static_cast<size_t>(n));
      budget -= n;
    }
    // Sequences preempted after being placed in the batch must leave it.
    for (size_t i = 0; i < batch_seqs.size();) {
      if (std::find(running_.begin(), running_.end(), batch_seqs[i]) == running_.end()) {
        batch_seqs.erase(batch_seqs.begin() + static_cast<long>(i));
        batch.erase(batch.begin() + static_cast<long>(i));
        chunk.erase(chunk.begin() + static_cast<long>(i));
      } else {
        ++i;
      }
    }
    if (batch.empty()) return;
    std::vector<std::shared_ptr<const LoraAdapter>> adapters;
    std::set<const LoraAdapter*> distinct;
    int64_t new_tokens = 0;
    for (auto& s : batch_seqs) {
      adapters.push_back(s->adapter);
      distinct.insert(s->adapter.get());
    }
    for (size_t i = 0; i < batch.size(); ++i) new_tokens += static_cast<int64_t>(chunk[i]);
    const absl::Time t0 = absl::Now();
    absl::StatusOr<at::Tensor> logits = lora_->Forward(batch, adapters, cache_.get(), LogitsMode::kLast);
    const absl::Duration step_time = absl::Now() - t0;
    if (!logits.ok()) {
      for (auto& s : batch_seqs) {
        DropRunning(s);
        Finish(s, logits.status());
      }
      return;
    }
    at::Tensor cpu = logits->to(at::kCPU);
    int64_t prompt_tokens = 0, generated = 0;
    for (size_t i = 0; i < batch_seqs.size(); ++i) {
      std::shared_ptr<Sequence> s = batch_seqs[i];
      if (s->prefilling) prompt_tokens += static_cast<int64_t>(chunk[i]);
      s->unfed.erase(s->unfed.begin(), s->unfed.begin() + static_cast<long>(chunk[i]));
      if (!s->unfed.empty()) continue;  // more prompt chunks to go
      s->prefilling = false;
      absl::StatusOr<TokenEvent> event = CallTorch("sampling", [&] { return s->generator->Step(cpu[static_cast<int64_t>(i)]); });
      if (!event.ok()) {
        DropRunning(s);
        Finish(s, event.status());
        continue;
      }
      ++generated;
      if (s->first_token == absl::InfinitePast()) s->first_token = absl::Now();
      if (s->callbacks.on_token) s->callbacks.on_token(*event);
      if (s->generator->finished()) {
        DropRunning(s);
        Finish(s, std::move(s->generator->result()));
      } else {
        s->unfed.assign(1, event->id);
      }
    }
    StepObserver observer;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.steps;
      if (distinct.size() > 1) ++stats_.multi_adapter_steps;
      stats_.tokens_in += prompt_tokens;
      stats_.tokens_out += generated;
      stats_.running = static_cast<int64_t>(running_.size());
      stats_.kv_bytes_reserved = cache_->bytes_reserved();
      stats_.last_batch_size = static_cast<int64_t>(batch.size());
      stats_.last_batch_adapters = static_cast<int64_t>(distinct.size());
      observer = observer_;
    }
    if (observer) observer(static_cast<int>(batch.size()), static_cast<int>(distinct.size()),
                           static_cast<int>(new_tokens), step_time);
  }

  const EngineOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<LoraModel> lora_;
  std::unique_ptr<AdapterRegistry> registry_;
  std::unique_ptr<KvCache> cache_;         // engine thread
  std::unique_ptr<Worker> worker_;  // created in Init, stopped (never reset) by Shutdown
  std::once_flag stopped_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::deque<std::shared_ptr<Sequence>>> queues_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  int64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_exited_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_);
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  StepObserver observer_ ABSL_GUARDED_BY(mu_);
  std::string last_admitted_adapter_ ABSL_GUARDED_BY(mu_);

  // Engine thread only.
  std::vector<std::shared_ptr<Sequence>> running_;
  std::vector<std::pair<std::shared_ptr<Sequence>, absl::Status>> expired_;
  std::string single_last_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto engine = std::make_unique<EngineImpl>(options);
  LORASERVE_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace loraserve::core
