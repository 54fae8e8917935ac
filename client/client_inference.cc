#include "client/client.h"

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/client_internal.h"
#include "loraserve/v1/inference_service.grpc.pb.h"

namespace loraserve {
namespace {

namespace pb = ::loraserve::v1;

using client_internal::MapEnum;
using client_internal::TokenFromProto;

// Client::StartGenerate's stream: one gRPC server stream per attempt; a seeded (or greedy)
// generation is restarted while no token has arrived yet.
class GenerateStreamImpl : public GenerateStream {
 public:
  GenerateStreamImpl(Client::Impl* impl, pb::GenerateRequest request, const CallOptions& call,
                     bool idempotent)
      : impl_(impl),
        request_(std::move(request)),
        call_(call),
        deadline_(impl->DeadlineOf(call)),
        max_attempts_(impl->MaxAttempts(call, idempotent)) {
    StartAttempt();
  }

  ~GenerateStreamImpl() override {
    if (reader_ != nullptr) {
      ctx_->TryCancel();
      pb::GenerateResponse msg;
      while (reader_->Read(&msg)) {
      }
      reader_->Finish();
    }
  }

  bool Next(GeneratedToken* token) override {
    while (pending_ >= result_.tokens.size()) {
      if (reader_ == nullptr) return false;
      pb::GenerateResponse msg;
      if (reader_->Read(&msg)) {
        Absorb(msg);
        continue;
      }
      absl::Status s = Client::Impl::Complete(*ctx_, reader_->Finish(), call_, attempt_);
      reader_.reset();
      if (result_.tokens.empty() && !cancelled_.load() &&
          impl_->WaitToRetry(s, attempt_, max_attempts_, deadline_) && !cancelled_.load()) {
        result_ = GenerateResult();
        StartAttempt();
        continue;
      }
      status_ = s;
      return false;
    }
    *token = result_.tokens[pending_++];
    return true;
  }

  absl::StatusOr<GenerateResult> Finish() override {
    if (reader_ != nullptr) {
      Cancel();
      GeneratedToken t;
      while (Next(&t)) {
      }
    }
    if (cancelled_.load()) return absl::CancelledError("generation cancelled by the caller");
    if (!status_.ok()) return status_;
    return result_;
  }

  void Cancel() override {
    cancelled_.store(true);
    std::lock_guard<std::mutex> lock(ctx_mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
  }

 private:
  void StartAttempt() {
    ++attempt_;
    auto ctx = std::make_unique<grpc::ClientContext>();
    impl_->Prepare(ctx.get(), call_, deadline_, request_.adapter());
    {
      std::lock_guard<std::mutex> lock(ctx_mu_);
      ctx_ = std::move(ctx);
      if (cancelled_.load()) ctx_->TryCancel();
    }
    reader_ = impl_->inference->Generate(ctx_.get(), request_);
  }

  void Absorb(const pb::GenerateResponse& msg) {
    for (const auto& t : msg.tokens()) {
      GeneratedToken token = TokenFromProto(t);
      result_.text += token.text;
      result_.tokens.push_back(std::move(token));
    }
    if (!msg.has_summary()) return;
    const pb::GenerationSummary& s = msg.summary();
    result_.finish_reason =
        MapEnum(s.finish_reason(),
                {{pb::FINISH_REASON_LENGTH, FinishReason::kLength},
                 {pb::FINISH_REASON_EOS, FinishReason::kEos},
                 {pb::FINISH_REASON_STOP, FinishReason::kStop}},
                FinishReason::kUnspecified);
    result_.stop_string = s.stop_string();
    result_.prompt_tokens = s.prompt_tokens();
    result_.completion_tokens = s.completion_tokens();
    result_.seed = s.seed();
    result_.queue_time_ms = s.queue_time_ms();
    result_.time_to_first_token_ms = s.time_to_first_token_ms();
  }

  Client::Impl* impl_;
  const pb::GenerateRequest request_;
  const CallOptions call_;
  const absl::Time deadline_;
  const int max_attempts_;
  int attempt_ = 0;
  std::mutex ctx_mu_;  // guards replacing ctx_ against Cancel()
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader_;
  std::atomic<bool> cancelled_{false};
  GenerateResult result_;
  size_t pending_ = 0;  // tokens of result_ not yet returned by Next
  absl::Status status_;
};

}  // namespace

std::unique_ptr<GenerateStream> Client::StartGenerate(const GenerateRequest& request,
                                                      const CallOptions& call) {
  pb::GenerateRequest req;
  req.set_adapter(request.adapter);
  req.set_text(request.text);
  req.mutable_token_ids()->Assign(request.token_ids.begin(), request.token_ids.end());
  const SamplingParams& sp = request.sampling;
  pb::SamplingOptions* so = req.mutable_sampling();
  if (sp.temperature.has_value()) so->set_temperature(*sp.temperature);
  so->set_top_k(sp.top_k);
  if (sp.top_p.has_value()) so->set_top_p(*sp.top_p);
  if (sp.seed.has_value()) so->set_seed(*sp.seed);
  so->set_max_new_tokens(sp.max_new_tokens);
  for (const auto& s : sp.stop) so->add_stop(s);
  so->set_ignore_eos(sp.ignore_eos);
  so->set_logprobs(sp.logprobs);
  so->set_top_logprobs(sp.top_logprobs);
  // A seeded or greedy generation gives the same tokens again: safe to restart before the first.
  const bool deterministic =
      sp.seed.has_value() || (sp.temperature.has_value() && *sp.temperature == 0);
  return std::make_unique<GenerateStreamImpl>(impl_.get(), std::move(req), call, deterministic);
}

absl::StatusOr<GenerateResult> Client::Generate(const GenerateRequest& request,
                                                const TokenCallback& on_token,
                                                const CallOptions& call) {
  std::unique_ptr<GenerateStream> stream = StartGenerate(request, call);
  GeneratedToken token;
  while (stream->Next(&token)) {
    if (on_token && !on_token(token)) {
      stream->Cancel();
      (void)stream->Finish();
      return absl::CancelledError("generation cancelled by the token callback");
    }
  }
  return stream->Finish();
}

absl::StatusOr<ScoreResult> Client::Score(const ScoreRequest& request, const CallOptions& call) {
  pb::ScoreRequest req;
  req.set_adapter(request.adapter);
  req.mutable_token_ids()->Assign(request.token_ids.begin(), request.token_ids.end());
  req.set_full_logits(request.full_logits);
  req.set_top_logprobs(request.top_logprobs);
  pb::ScoreResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->inference->Score(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  ScoreResult out;
  out.num_tokens = resp.num_tokens();
  out.vocab_size = resp.vocab_size();
  out.logits.assign(resp.logits().begin(), resp.logits().end());
  out.token_logprobs.assign(resp.token_logprobs().begin(), resp.token_logprobs().end());
  for (const auto& p : resp.top_logprobs()) {
    std::vector<TokenLogprob> row;
    for (const auto& t : p.top()) row.push_back({t.id(), t.logprob()});
    out.top_logprobs.push_back(std::move(row));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> Client::Tokenize(const std::string& text,
                                                      bool add_special_tokens, bool parse_special,
                                                      const CallOptions& call) {
  pb::TokenizeRequest req;
  req.set_text(text);
  req.set_add_special_tokens(add_special_tokens);
  req.set_parse_special(parse_special);
  pb::TokenizeResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->inference->Tokenize(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
}

absl::StatusOr<std::string> Client::Detokenize(const std::vector<int32_t>& token_ids,
                                               bool skip_special_tokens, const CallOptions& call) {
  pb::DetokenizeRequest req;
  req.mutable_token_ids()->Assign(token_ids.begin(), token_ids.end());
  req.set_skip_special_tokens(skip_special_tokens);
  pb::DetokenizeResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->inference->Detokenize(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  return resp.text();
}

absl::StatusOr<std::vector<std::string>> Client::TokenTexts(const std::vector<int32_t>& token_ids,
                                                            const CallOptions& call) {
  pb::DetokenizeRequest req;
  req.mutable_token_ids()->Assign(token_ids.begin(), token_ids.end());
  req.set_per_token(true);
  pb::DetokenizeResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->inference->Detokenize(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  if (resp.token_texts_size() != static_cast<int>(token_ids.size())) {
    return absl::InternalError("the server did not return one text per token (an older server?)");
  }
  return std::vector<std::string>(resp.token_texts().begin(), resp.token_texts().end());
}

}  // namespace loraserve
