#include "server/service_env.h"

#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace loraserve::server {
namespace {

bool ValidRequestId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%016x", rng());
}

}  // namespace

absl::StatusOr<std::shared_ptr<core::Engine>> EngineSlot::ForNewCall() const {
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("the server is shutting down");
  if (engine_ == nullptr) return absl::UnavailableError("the server is starting (model loading)");
  return engine_;
}

std::shared_ptr<core::Engine> EngineSlot::engine() const {
  absl::MutexLock lock(&mu_);
  return engine_;
}

void EngineSlot::Attach(std::shared_ptr<core::Engine> engine) {
  absl::MutexLock lock(&mu_);
  engine_ = std::move(engine);
}

void EngineSlot::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool EngineSlot::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

RpcCall::RpcCall(ServiceEnv* env, grpc::CallbackServerContext* context, const char* rpc)
    : env_(env), context_(context), rpc_(rpc), start_(absl::Now()) {
  const auto& md = context->client_metadata();
  auto it = md.find(kRequestIdKey);
  if (it != md.end()) {
    absl::string_view given(it->second.data(), it->second.size());
    if (ValidRequestId(given)) request_id_ = std::string(given);
  }
  if (request_id_.empty()) request_id_ = NewRequestId();
}

absl::StatusOr<std::shared_ptr<core::Engine>> RpcCall::Admit() {
  if (env_->auth != nullptr) {
    const auto& md = context_->client_metadata();
    auto it = md.find(kAuthorizationKey);
    std::optional<absl::string_view> authorization;
    if (it != md.end()) authorization = absl::string_view(it->second.data(), it->second.size());
    absl::Status s = env_->auth->Check(authorization);
    if (!s.ok()) return s;
  }
  return env_->engine.ForNewCall();
}

void RpcCall::LogEvent(absl::string_view event, absl::string_view fields) const {
  env_->logger.Log(absl::StrCat("event=", event, " rid=", request_id_, " rpc=", rpc_,
                                fields.empty() ? "" : " ", fields));
}

grpc::Status RpcCall::Complete(const absl::Status& status) {
  const absl::Duration latency = absl::Now() - start_;
  context_->AddTrailingMetadata(kRequestIdKey, request_id_);
  if (!status.ok() && retry_after_ > absl::ZeroDuration()) {
    context_->AddTrailingMetadata(kRetryAfterKey,
                                  absl::StrCat(absl::ToInt64Milliseconds(retry_after_)));
  }
  grpc::Status out = env_->ToGrpc(status);
  if (env_->metrics != nullptr) env_->metrics->RecordRpc(rpc_, status.code(), latency);
  std::string line = absl::StrFormat(
      "access rid=%s rpc=%s adapter=%s code=%s latency_ms=%.3f tokens_in=%d tokens_out=%d",
      request_id_, rpc_, LogValue(adapter_.empty() ? "-" : adapter_),
      absl::StatusCodeToString(status.code()), absl::ToDoubleMilliseconds(latency), tokens_in_,
      tokens_out_);
  if (!status.ok()) absl::StrAppend(&line, " error=", LogValue(out.error_message()));
  env_->logger.Log(line);
  return out;
}

}  // namespace loraserve::server
