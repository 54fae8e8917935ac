#include "server/service_env.h"

#include <optional>
#include <cctype>
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

TenantCall::~TenantCall() { Leave(0); }

absl::Status TenantCall::Authenticate(std::optional<absl::string_view> authorization) {
  absl::StatusOr<Caller> caller = env_->tenants->Authenticate(authorization);
  if (!caller.ok()) return caller.status();
  caller_ = *std::move(caller);
  return absl::OkStatus();
}

absl::StatusOr<std::string> TenantCall::Resolve(absl::string_view name, Access access, absl::string_view field,
                                                bool allow_empty) {
  absl::StatusOr<std::string> internal = ResolveAdapterName(caller_, name, access, field, allow_empty);
  if (internal.ok() && *internal != name) names_.emplace_back(*internal, std::string(name));
  return internal;
}

std::string TenantCall::Display(absl::string_view internal) const {
  if (caller_.tenant == nullptr) return std::string(internal);
  return DisplayAdapterName(caller_, internal).value_or(std::string(internal));
}

absl::Status TenantCall::Rename(const absl::Status& status) const {
  if (status.ok() || caller_.tenant == nullptr || !caller_.namespaced()) return status;
  std::string message = RenameAdapters(status.message(), names_);
  // Own adapters the call did not resolve itself (a combination's sources, say): "<own>/x" -> "x".
  const std::string prefix = OwnPrefix(caller_);
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = message.find(prefix, pos)) != std::string::npos; pos = hit + prefix.size()) {
    const bool starts_name = hit == 0 || !IsAdapterNameChar(message[hit - 1]);
    out.append(message, pos, hit - pos);
    if (!starts_name) out.append(prefix);
  }
  out.append(message, pos, std::string::npos);
  return absl::Status(status.code(), out);
}

absl::StatusOr<bool> TenantCall::Enter(std::function<void()> resume, absl::Duration* retry_after) {
  absl::StatusOr<bool> admitted = caller_.limiter->Enter(std::move(resume), &ticket_, retry_after);
  if (admitted.ok()) entered_ = true;
  return admitted;
}

bool TenantCall::Withdraw() {
  if (!entered_ || ticket_ == 0) return false;
  if (!caller_.limiter->Withdraw(ticket_)) return false;
  entered_ = false;
  return true;
}

void TenantCall::Leave(int64_t tokens) {
  if (!entered_) return;
  entered_ = false;
  caller_.limiter->Charge(tokens);
  std::function<void()> next = caller_.limiter->Leave();
  if (next) env_->pool->Post(std::move(next));
}

RpcCall::RpcCall(ServiceEnv* env, grpc::CallbackServerContext* context, const char* rpc)
    : env_(env), context_(context), rpc_(rpc), tenant_(env), start_(absl::Now()) {
  const auto& md = context->client_metadata();
  auto it = md.find(kRequestIdKey);
  if (it != md.end()) {
    absl::string_view given(it->second.data(), it->second.size());
    if (ValidRequestId(given)) request_id_ = std::string(given);
  }
  if (request_id_.empty()) request_id_ = NewRequestId();
}

absl::StatusOr<std::shared_ptr<core::Engine>> RpcCall::Admit() {
  const auto& md = context_->client_metadata();
  auto it = md.find(kAuthorizationKey);
  std::optional<absl::string_view> authorization;
  if (it != md.end()) authorization = absl::string_view(it->second.data(), it->second.size());
  absl::Status s = tenant_.Authenticate(authorization);
  if (!s.ok()) return s;
  return env_->engine.ForNewCall();
}

absl::StatusOr<std::string> RpcCall::Resolve(absl::string_view name, Access access, absl::string_view field,
                                             bool allow_empty) {
  absl::StatusOr<std::string> internal = tenant_.Resolve(name, access, field, allow_empty);
  if (internal.ok()) adapter_ = *internal;
  return internal;
}

void RpcCall::LogEvent(absl::string_view event, absl::string_view fields) const {
  env_->logger.Log(absl::StrCat("event=", event, " rid=", request_id_, " rpc=", rpc_,
                                fields.empty() ? "" : " ", fields));
}

grpc::Status RpcCall::Complete(const absl::Status& engine_status) {
  const absl::Duration latency = absl::Now() - start_;
  if (tenant_.authenticated() && env_->metrics != nullptr) {
    env_->metrics->RecordTenantRequest(tenant_.caller().tenant->id, engine_status.code());
    if (tenant_.entered()) {
      env_->metrics->RecordTenantTokens(tenant_.caller().tenant->id, tokens_in_, tokens_out_, queue_time_);
    }
  }
  tenant_.Leave(tokens_in_ + tokens_out_);
  const absl::Status status = tenant_.Rename(engine_status);
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
  if (env_->audit != nullptr && IsManagementRpc(rpc_)) {
    AuditRecord r;
    r.via = "grpc";
    r.call = rpc_;
    r.request_id = request_id_;
    if (tenant_.authenticated()) {
      r.tenant = tenant_.caller().tenant->id;
      r.role = RoleName(tenant_.caller().role());
    }
    r.adapter = adapter_;
    r.code = absl::StatusCodeToString(status.code());
    r.message = out.error_message();
    env_->audit->Record(r);
  }
  return out;
}

}  // namespace loraserve::server
