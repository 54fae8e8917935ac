// What the gRPC services share: configuration, the engine (once attached), metrics, the access and
// event log, the pool for blocking work, and the adapter book. Plus RpcCall, the per-RPC record
// (request id, access log line, metrics, trailing metadata).
#ifndef LORASERVE_SERVER_SERVICE_ENV_H_
#define LORASERVE_SERVER_SERVICE_ENV_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/adapter_book.h"
#include "server/auth.h"
#include "server/grpc_status.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/state_store.h"
#include "server/tenants.h"
#include "server/work_pool.h"

namespace loraserve::core {
class Engine;
}  // namespace loraserve::core

namespace loraserve::server {

inline constexpr char kRequestIdKey[] = "x-request-id";
inline constexpr char kRetryAfterKey[] = "retry-after-ms";

// The engine once attached. Thread-safe.
class EngineSlot {
 public:
  // The engine for a new RPC: Unavailable before it is attached (model loading, warm-up) and once
  // draining has begun. Services call RpcCall::Admit(), which authenticates first.
  absl::StatusOr<std::shared_ptr<core::Engine>> ForNewCall() const;
  // The engine regardless of draining (null before attach).
  std::shared_ptr<core::Engine> engine() const;
  void Attach(std::shared_ptr<core::Engine> engine);
  void SetDraining();
  bool draining() const;

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<core::Engine> engine_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

struct ServiceConfig {
  std::string adapter_root;  // canonical absolute path; "" = LoadAdapter refused
  bool load_on_miss = false;  // requests naming an unloaded adapter load <adapter_root>/<name>
  bool restore_register_only = false;  // --state_dir restores register adapters, not load them
  std::string upload_dir;    // absolute; uploads are written below it
  std::string scratch_dir;   // absolute; SaveAdapter / ExportMergedModel write below it
  int64_t max_upload_bytes = 0;
  int64_t max_message_bytes = 0;
  int64_t file_chunk_bytes = 1 << 20;  // FileChunk data size when streaming files back
};

struct ServiceEnv {
  ServiceConfig config;
  Logger logger;
  Metrics* metrics = nullptr;
  WorkPool* pool = nullptr;
  AdapterBook book;
  EngineSlot engine;
  // Who may call and as which tenant (always set by Server::Start; the open server has one
  // tenant that needs no token).
  std::unique_ptr<TenantRegistry> tenants;
  std::unique_ptr<AuditLog> audit;  // --audit_log; null = none
  std::unique_ptr<StateStore> state;  // --state_dir; null = nothing survives a restart
  std::vector<PathAlias> path_aliases;  // server paths callers must not see

  grpc::Status ToGrpc(const absl::Status& status) const { return ToGrpcStatus(status, path_aliases); }
};

// The tenant side of one call on any transport: who the caller is, the adapter names it used (so
// that messages name them as the caller did), and its slot under the tenant's request quotas.
// Not thread-safe, like RpcCall.
class TenantCall {
 public:
  explicit TenantCall(ServiceEnv* env) : env_(env) {}
  ~TenantCall();  // frees a slot still held
  TenantCall(const TenantCall&) = delete;
  TenantCall& operator=(const TenantCall&) = delete;

  // Unauthenticated unless `authorization` carries a known token (or the server needs none).
  absl::Status Authenticate(std::optional<absl::string_view> authorization);
  bool authenticated() const { return caller_.tenant != nullptr; }
  // Valid once authenticated.
  const Caller& caller() const { return caller_; }

  // ResolveAdapterName for this caller; the pair is remembered for Rename.
  absl::StatusOr<std::string> Resolve(absl::string_view name, Access access, absl::string_view field,
                                      bool allow_empty = false);
  // The caller's name for an engine adapter name (as DisplayAdapterName; the name itself when
  // hidden, which callers never pass).
  std::string Display(absl::string_view internal) const;
  // `status` with the engine's adapter names replaced by the caller's.
  absl::Status Rename(const absl::Status& status) const;

  // Admission of an inference request under the tenant's quotas: true when it runs now, false
  // when it waits for a slot (`resume` then runs on the work pool once it has one).
  // ResourceExhausted over a quota, `*retry_after` set (or zero when unknown).
  absl::StatusOr<bool> Enter(std::function<void()> resume, absl::Duration* retry_after);
  // Takes a waiting request out of the queue: true when it will not resume.
  bool Withdraw();
  // Whether the call holds (or waits for) a request slot: an inference request.
  bool entered() const { return entered_; }
  // Ends the request: frees its slot (resuming the next waiter) and charges `tokens` to the
  // tenant's tokens-per-minute bucket. Idempotent.
  void Leave(int64_t tokens);

 private:
  ServiceEnv* env_;
  Caller caller_;
  std::vector<std::pair<std::string, std::string>> names_;  // engine name -> caller's name
  bool entered_ = false;  // holds or waits for a slot
  uint64_t ticket_ = 0;
};

// One RPC's record. Not thread-safe: a reactor uses it from one reaction at a time.
class RpcCall {
 public:
  // Takes the request id from the caller's `x-request-id` metadata (1 to 128 characters of
  // [A-Za-z0-9._:-]) or generates one.
  RpcCall(ServiceEnv* env, grpc::CallbackServerContext* context, const char* rpc);

  // Where every loraserve.v1 handler starts: Unauthenticated when the server requires a bearer
  // token and the call's `authorization` metadata does not carry a known one (checked first, so
  // an unauthenticated caller learns nothing about the server's state); then the engine as
  // EngineSlot::ForNewCall (Unavailable while starting or draining).
  absl::StatusOr<std::shared_ptr<core::Engine>> Admit();

  const std::string& request_id() const { return request_id_; }
  const char* rpc() const { return rpc_; }
  // After a successful Admit.
  const Caller& caller() const { return tenant_.caller(); }
  TenantCall& tenant() { return tenant_; }
  // TenantCall::Resolve; on success also the call's adapter (the engine's name, in the access log
  // and the metrics).
  absl::StatusOr<std::string> Resolve(absl::string_view name, Access access, absl::string_view field,
                                      bool allow_empty = false);
  void set_adapter(absl::string_view adapter) { adapter_ = std::string(adapter); }
  const std::string& adapter() const { return adapter_; }
  void set_tokens(int64_t in, int64_t out) {
    tokens_in_ = in;
    tokens_out_ = out;
  }
  // Generate: the engine's queue time (per-tenant metrics).
  void set_queue_time(absl::Duration d) { queue_time_ = d; }
  // Trailing metadata `retry-after-ms` on the final status.
  void set_retry_after(absl::Duration d) { retry_after_ = d; }

  // A lifecycle event about this request ("event=<event> rid=<id> <fields>").
  void LogEvent(absl::string_view event, absl::string_view fields = "") const;

  // Adds the trailing metadata, records the metrics and writes the access log line; frees the
  // call's tenant slot, charging its tokens; returns the status to finish the call with, adapter
  // names as the caller wrote them. Call exactly once, before finishing the call.
  grpc::Status Complete(const absl::Status& status);

 private:
  ServiceEnv* env_;
  grpc::CallbackServerContext* context_;
  const char* rpc_;
  std::string request_id_;
  std::string adapter_;
  TenantCall tenant_;
  int64_t tokens_in_ = 0;
  int64_t tokens_out_ = 0;
  absl::Duration retry_after_ = absl::ZeroDuration();
  std::optional<absl::Duration> queue_time_;
  absl::Time start_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_SERVICE_ENV_H_
