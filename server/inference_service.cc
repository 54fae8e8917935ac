#include "server/inference_service.h"

#include <chrono>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/engine/engine.h"
#include "server/adapter_service.h"
#include "server/grpc_handoff.h"
#include "server/proto_convert.h"
#include "server/unary_call.h"

namespace loraserve::server {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

// Streams one generation. Engine callbacks append to `next_` and start a write when none is in
// flight; tokens that arrive during a write are coalesced into the next message, so memory stays
// bounded by the generation and a slow reader never stalls the engine.
class GenerateReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  GenerateReactor(ServiceEnv* env, grpc::CallbackServerContext* context,
                  const pb::GenerateRequest& request)
      : env_(env), context_(context), call_(env, context, "Generate") {
    Start(request);
    GrpcHandoff(this);
  }

  void OnWriteDone(bool ok) override {
    GrpcReaction(this);
    std::shared_ptr<core::RequestHandle> cancel;
    Step next;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (!ok) {
        // The caller is gone: stop generating for it.
        write_failed_ = true;
        has_next_ = false;
        cancel = handle_;
      }
      next = NextStepLocked();
    }
    if (cancel != nullptr) cancel->Cancel();
    if (next != Step::kNone) Take(next);
  }

  void OnCancel() override {
    GrpcReaction(this);
    std::shared_ptr<core::RequestHandle> cancel;
    bool waiting;
    bool deadline_passed;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      // gRPC cancels the call when its deadline passes (its timer may fire a little early).
      deadline_passed_ = absl::Now() + absl::Milliseconds(50) >= deadline_;
      cancel = handle_;
      waiting = queued_ && !resumed_;
      deadline_passed = deadline_passed_;
    }
    // Still waiting for one of the tenant's request slots: it will not run.
    if (waiting && call_.tenant().Withdraw()) {
      return FinishEarly(deadline_passed ? absl::DeadlineExceededError(
                                                "the caller's deadline passed while the request waited for "
                                                "one of its tenant's concurrent_requests slots")
                                          : absl::CancelledError("cancelled while waiting for a request slot"));
    }
    // on_done follows (Cancelled / DeadlineExceeded) and finishes the call.
    if (cancel != nullptr) cancel->Cancel();
  }

  void OnDone() override {
    GrpcReaction(this);
    delete this;
  }

 private:
  // Authenticates, resolves the adapter and takes one of the tenant's request slots (or waits
  // for one: Run then starts from the work pool).
  void Start(const pb::GenerateRequest& request) {
    request_ = &request;
    deadline_ = DeadlineOf(context_);
    call_.set_adapter(request.adapter());
    auto engine_or = call_.Admit();
    if (!engine_or.ok()) return FinishEarly(engine_or.status());
    engine_ = *std::move(engine_or);
    absl::StatusOr<std::string> adapter =
        call_.Resolve(request.adapter(), Access::kUse, "adapter", /*allow_empty=*/true);
    if (!adapter.ok()) return FinishEarly(adapter.status());
    adapter_ = *std::move(adapter);
    absl::Duration retry_after;
    absl::StatusOr<bool> admitted = call_.tenant().Enter(
        [this] {
          {
            absl::MutexLock lock(&mu_);
            resumed_ = true;
          }
          Run();
        },
        &retry_after);
    if (!admitted.ok()) {
      call_.set_retry_after(retry_after > absl::ZeroDuration() ? retry_after : env_->metrics->RetryAfterHint());
      return FinishEarly(admitted.status());
    }
    if (*admitted) return Run();
    absl::MutexLock lock(&mu_);
    queued_ = true;
  }

  void Run() {
    const pb::GenerateRequest& request = *request_;
    std::shared_ptr<core::Engine> engine = engine_;
    absl::Status valid = EnsureLoadedOnMiss(*env_, *engine, call_.tenant(), adapter_);
    if (!valid.ok()) return FinishEarly(valid);
    auto sampling = ValidateGenerateRequest(request, engine->vocab_size());
    if (!sampling.ok()) return FinishEarly(sampling.status());
    const bool has_text = !request.text().empty();
    core::GenerateRequest req;
    req.request_id = call_.request_id();
    req.adapter = adapter_;
    req.tenant = call_.caller().tenant->id;
    req.tenant_weight = call_.caller().tenant->weight;
    if (has_text) {
      req.prompt_ids = engine->Tokenize(request.text(), /*add_special_tokens=*/true,
                                        /*parse_special=*/false);
    } else {
      req.prompt_ids.assign(request.token_ids().begin(), request.token_ids().end());
    }
    logprobs_ = sampling->logprobs;
    req.sampling = *std::move(sampling);
    req.deadline = deadline_;
    call_.set_tokens(static_cast<int64_t>(req.prompt_ids.size()), 0);

    core::GenerateCallbacks callbacks;
    callbacks.on_token = [this](const core::TokenEvent& e) { OnToken(e); };
    callbacks.on_done = [this](absl::StatusOr<core::GenerationResult> r,
                               const core::RequestStats& stats) {
      OnEngineDone(std::move(r), stats);
    };
    {
      // Until the handle is recorded below, the call must not finish (this reactor must live).
      absl::MutexLock lock(&mu_);
      submitting_ = true;
    }
    auto handle = engine->SubmitGenerate(std::move(req), std::move(callbacks));
    if (!handle.ok()) {
      if (handle.status().code() == absl::StatusCode::kResourceExhausted) {
        call_.set_retry_after(env_->metrics->RetryAfterHint());
      }
      return FinishEarly(handle.status());
    }
    bool cancel_now;
    Step next;
    {
      absl::MutexLock lock(&mu_);
      handle_ = *handle;
      cancel_now = cancelled_;
      submitting_ = false;
      next = NextStepLocked();  // the engine may have finished already: nobody else finishes it
    }
    if (cancel_now) (*handle)->Cancel();
    if (next != Step::kNone) Take(next);
  }

  // Engine thread.
  void OnToken(const core::TokenEvent& e) {
    Step next;
    {
      absl::MutexLock lock(&mu_);
      if (write_failed_) return;
      TokenEventToProto(e, logprobs_, next_.add_tokens());
      has_next_ = true;
      next = NextStepLocked();
    }
    if (next != Step::kNone) Take(next);
  }

  // Engine thread.
  void OnEngineDone(absl::StatusOr<core::GenerationResult> result, const core::RequestStats& stats) {
    // Safe before the lock: the call cannot finish until engine_done_ is set below.
    env_->metrics->RecordGeneration(call_.adapter(), stats);
    Step next;
    {
      absl::MutexLock lock(&mu_);
      call_.set_tokens(stats.prompt_tokens, stats.completion_tokens);
      call_.set_queue_time(stats.queue_time);
      engine_done_ = true;
      if (result.ok()) {
        pb::GenerationSummary* s = next_.mutable_summary();
        s->set_finish_reason(FinishReasonToProto(result->finish_reason));
        s->set_stop_string(result->stop_string);
        s->set_prompt_tokens(stats.prompt_tokens);
        s->set_completion_tokens(stats.completion_tokens);
        s->set_seed(result->seed);
        s->set_queue_time_ms(absl::ToDoubleMilliseconds(stats.queue_time));
        s->set_time_to_first_token_ms(absl::ToDoubleMilliseconds(stats.time_to_first_token));
        has_next_ = !write_failed_;
      } else if (result.status().code() == absl::StatusCode::kCancelled && deadline_passed_) {
        // The call was cancelled because the caller's deadline passed: report it as that.
        final_status_ = absl::DeadlineExceededError("the caller's deadline passed");
      } else {
        final_status_ = result.status();
      }
      next = NextStepLocked();
    }
    // With a write in flight (kNone) its completion may finish the call and delete the reactor
    // at once: even a member call on `this` is then a use after free.
    if (next != Step::kNone) Take(next);
  }

  // What to do next, decided under the same lock as the state change that prompted it, so exactly
  // one thread starts each write and exactly one finishes the call.
  enum class Step { kNone, kWrite, kFinish };
  Step NextStepLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (write_in_flight_ || finished_) return Step::kNone;
    if (has_next_) {
      in_flight_ = std::move(next_);
      next_.Clear();
      has_next_ = false;
      write_in_flight_ = true;
      return Step::kWrite;
    }
    if (!engine_done_ || submitting_) return Step::kNone;
    finished_ = true;
    finish_status_ = final_status_;
    if (finish_status_.ok() && write_failed_) {
      finish_status_ = absl::CancelledError("the caller stopped reading");
    }
    return Step::kFinish;
  }

  // Runs the step outside the lock. Must be the caller's last use of `this`: once a write is
  // started or the call finished, another thread may finish it and delete the reactor. Callers
  // skip kNone without calling it: outside a gRPC reaction the reactor may already be gone.
  void Take(Step step) {
    if (step == Step::kWrite) {
      GrpcHandoff(this);
      StartWrite(&in_flight_);
    } else if (step == Step::kFinish) {
      FinishRpc(this, call_, finish_status_);
    }
  }

  // Before submission: nothing is in flight.
  void FinishEarly(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    FinishRpc(this, call_, status);
  }

  ServiceEnv* const env_;
  grpc::CallbackServerContext* const context_;
  RpcCall call_;
  const pb::GenerateRequest* request_ = nullptr;  // owned by gRPC until OnDone
  std::shared_ptr<core::Engine> engine_;
  std::string adapter_;  // the engine's name
  bool logprobs_ = false;
  absl::Time deadline_ = absl::InfiniteFuture();

  absl::Mutex mu_;
  pb::GenerateResponse next_ ABSL_GUARDED_BY(mu_);
  bool has_next_ ABSL_GUARDED_BY(mu_) = false;
  // Owned by the write in flight (filled by NextStepLocked only while no write is in flight).
  pb::GenerateResponse in_flight_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool submitting_ ABSL_GUARDED_BY(mu_) = false;  // Run between SubmitGenerate and recording handle_
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool deadline_passed_ ABSL_GUARDED_BY(mu_) = false;
  bool queued_ ABSL_GUARDED_BY(mu_) = false;   // waited for a tenant request slot
  bool resumed_ ABSL_GUARDED_BY(mu_) = false;  // ... and got one
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  // Set once with finished_; read by the one thread that finishes the call.
  absl::Status finish_status_;
  std::shared_ptr<core::RequestHandle> handle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<pb::GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const pb::GenerateRequest* request) {
  return new GenerateReactor(env_, context, *request);
}

namespace {

// Score once the caller holds one of its tenant's request slots. `adapter`: the engine's name.
void RunScore(UnaryCall* c, std::shared_ptr<core::Engine> engine, const pb::ScoreRequest* request,
              pb::ScoreResponse* response, const std::string& adapter) {
  absl::Status valid = EnsureLoadedOnMiss(*c->env, *engine, c->call.tenant(), adapter);
  const int64_t n = request->token_ids_size();
  if (valid.ok()) {
    valid = ValidateScoreRequest(*request, engine->vocab_size(), engine->max_context(),
                                 c->env->config.max_message_bytes);
  }
  if (!valid.ok()) return c->Finish(valid);
  core::ScoreRequest req;
  req.request_id = c->call.request_id();
  req.adapter = adapter;
  req.token_ids.assign(request->token_ids().begin(), request->token_ids().end());
  req.full_logits = request->full_logits();
  req.top_logprobs = request->top_logprobs();
  c->call.set_tokens(n, 0);
  engine->SubmitScore(std::move(req), [c, response, n](absl::StatusOr<core::ScoreResult> result) {
    if (!result.ok()) {
      if (result.status().code() == absl::StatusCode::kResourceExhausted) {
        c->call.set_retry_after(c->env->metrics->RetryAfterHint());
      }
      c->Finish(result.status());
      return;
    }
    ScoreResultToProto(*result, response);
    if (static_cast<int64_t>(response->ByteSizeLong()) > c->env->config.max_message_bytes) {
      response->Clear();
      c->Finish(absl::InvalidArgumentError(
          "the reply would exceed the server's max message size; ask for fewer tokens or top_logprobs"));
      return;
    }
    c->env->metrics->RecordScore(c->call.adapter(), n);
    c->Finish(absl::OkStatus());
  });
}

}  // namespace

grpc::ServerUnaryReactor* InferenceService::Score(grpc::CallbackServerContext* context,
                                                  const pb::ScoreRequest* request,
                                                  pb::ScoreResponse* response) {
  auto* c = new UnaryCall(env_, context, "Score");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  c->call.set_adapter(request->adapter());
  auto engine_or = c->call.Admit();
  if (!engine_or.ok()) {
    c->Finish(engine_or.status());
    return reactor;
  }
  std::shared_ptr<core::Engine> engine = *std::move(engine_or);
  absl::StatusOr<std::string> adapter =
      c->call.Resolve(request->adapter(), Access::kUse, "adapter", /*allow_empty=*/true);
  if (!adapter.ok()) {
    c->Finish(adapter.status());
    return reactor;
  }
  absl::Duration retry_after;
  // A Score waiting for a slot has no cancellation callback (a unary call): when its turn comes
  // after the caller gave up, it ends without running.
  absl::StatusOr<bool> admitted = c->call.tenant().Enter(
      [c, engine, request, response, adapter = *adapter, context] {
        if (context->IsCancelled()) return c->Finish(absl::CancelledError("cancelled while waiting for a request slot"));
        RunScore(c, engine, request, response, adapter);
      },
      &retry_after);
  if (!admitted.ok()) {
    c->call.set_retry_after(retry_after > absl::ZeroDuration() ? retry_after : env_->metrics->RetryAfterHint());
    c->Finish(admitted.status());
    return reactor;
  }
  if (*admitted) RunScore(c, engine, request, response, *adapter);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const pb::TokenizeRequest* request,
                                                     pb::TokenizeResponse* response) {
  auto* c = new UnaryCall(env_, context, "Tokenize");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto engine = c->call.Admit();
  if (!engine.ok()) {
    c->Finish(engine.status());
    return reactor;
  }
  const std::vector<int32_t> ids =
      (*engine)->Tokenize(request->text(), request->add_special_tokens(), request->parse_special());
  response->mutable_token_ids()->Assign(ids.begin(), ids.end());
  c->call.set_tokens(0, static_cast<int64_t>(ids.size()));
  c->Finish(absl::OkStatus());
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Detokenize(grpc::CallbackServerContext* context,
                                                       const pb::DetokenizeRequest* request,
                                                       pb::DetokenizeResponse* response) {
  auto* c = new UnaryCall(env_, context, "Detokenize");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto engine = c->call.Admit();
  if (!engine.ok()) {
    c->Finish(engine.status());
    return reactor;
  }
  absl::Status valid = ValidateTokenIds(request->token_ids(), (*engine)->vocab_size(), "token_ids");
  if (!valid.ok()) {
    c->Finish(valid);
    return reactor;
  }
  const std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  response->set_text((*engine)->Detokenize(ids, request->skip_special_tokens()));
  if (request->per_token()) {
    for (int32_t id : ids) {
      response->add_token_texts((*engine)->Detokenize({id}, request->skip_special_tokens()));
    }
  }
  c->call.set_tokens(static_cast<int64_t>(ids.size()), 0);
  c->Finish(absl::OkStatus());
  return reactor;
}

}  // namespace loraserve::server
