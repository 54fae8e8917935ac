// Internal to the client library (client/*.cc); not installed, not part of the API of
// client/client.h. Holds Client::Impl (channel, stubs, deadlines, retries, the shared call
// plumbing of every RPC) and the conversions between the loraserve.v1 messages and the plain
// structs of client.h.
//
// The helpers live in loraserve::client_internal with hidden visibility: client_exports.map
// exports loraserve::* from the shared library, and these must stay out of it.
#ifndef LORASERVE_CLIENT_CLIENT_INTERNAL_H_
#define LORASERVE_CLIENT_CLIENT_INTERNAL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "loraserve/v1/inference_service.grpc.pb.h"
#include "transfer/file_transfer.h"

namespace loraserve {
namespace __attribute__((visibility("hidden"))) client_internal {

namespace pb = ::loraserve::v1;

inline constexpr char kRequestIdKey[] = "x-request-id";
inline constexpr char kAuthorizationKey[] = "authorization";
// The adapter a call is about, on every call that names one: what a proxy hashes on to send all
// of an adapter's traffic to one replica (deploy/envoy/envoy.yaml).
inline constexpr char kAdapterKey[] = "x-loraserve-adapter";

// The adapter a request names: its `adapter` field (inference), else its `name` (adapter
// management); "" when it has neither.
inline std::string AdapterOf(const google::protobuf::Message& m) {
  const google::protobuf::Descriptor* d = m.GetDescriptor();
  for (const char* field : {"adapter", "name"}) {
    const google::protobuf::FieldDescriptor* f = d->FindFieldByName(field);
    if (f != nullptr && f->type() == google::protobuf::FieldDescriptor::TYPE_STRING && !f->is_repeated()) {
      return m.GetReflection()->GetString(m, f);
    }
  }
  return "";
}
inline constexpr char kRetryAfterKey[] = "retry-after-ms";
inline constexpr char kRequestIdPayload[] = "type.loraserve.dev/request-id";
inline constexpr char kRetryAfterPayload[] = "type.loraserve.dev/retry-after-ms";

std::string ToString(const grpc::string_ref& s);

// The `To` that `value` maps to in `table`, else `fallback` (proto enums to the client's).
template <typename From, typename To, size_t N>
To MapEnum(From value, const std::pair<From, To> (&table)[N], To fallback) {
  for (const auto& [from, to] : table) {
    if (from == value) return to;
  }
  return fallback;
}

// Fills the request id and retry delay of `info` from the server's trailing metadata.
void ReadTrailers(const grpc::ClientContext& ctx, CallInfo* info);

AdapterInfo FromProto(const pb::Adapter& a);

// InvalidArgument for a name that is not one of the combination types.
absl::StatusOr<pb::CombinationType> CombinationToProto(const std::string& name);

GeneratedToken TokenFromProto(const pb::GeneratedToken& t);

// A local problem of the directory being uploaded (listing, reading): the caller's input.
absl::Status LocalFileError(const absl::Status& s);

// Whether a failed attempt may be tried again (the call itself being idempotent).
bool Retryable(const absl::Status& s);

// Delay before retry number `retry` (1 = the first retry).
absl::Duration Backoff(const RetryPolicy& policy, int retry, std::optional<absl::Duration> server);

}  // namespace client_internal

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::unique_ptr<client_internal::pb::AdapterService::Stub> adapters;
  std::unique_ptr<client_internal::pb::InferenceService::Stub> inference;

  absl::Time DeadlineOf(const CallOptions& call) const {
    return absl::Now() +
           (call.timeout > absl::ZeroDuration() ? call.timeout : options.default_deadline);
  }
  int MaxAttempts(const CallOptions& call, bool idempotent) const {
    if (!idempotent) return 1;
    return std::max(1, call.max_attempts > 0 ? call.max_attempts : options.retry.max_attempts);
  }

  void Prepare(grpc::ClientContext* ctx, const CallOptions& call, absl::Time deadline,
               const std::string& adapter = "") const {
    ctx->set_deadline(absl::ToChronoTime(deadline));
    if (!adapter.empty()) ctx->AddMetadata(client_internal::kAdapterKey, adapter);
    if (!call.request_id.empty()) {
      ctx->AddMetadata(client_internal::kRequestIdKey, call.request_id);
    }
    if (!options.bearer_token.empty()) {
      ctx->AddMetadata(client_internal::kAuthorizationKey, "Bearer " + options.bearer_token);
    }
  }

  // The call's final status with the server's trailing metadata attached.
  static absl::Status Complete(const grpc::ClientContext& ctx, const grpc::Status& s,
                               const CallOptions& call, int attempt) {
    CallInfo info;
    client_internal::ReadTrailers(ctx, &info);
    info.attempts = attempt;
    if (call.info != nullptr) *call.info = info;
    if (s.ok()) return absl::OkStatus();
    absl::Status out(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    if (!info.request_id.empty()) {
      out.SetPayload(client_internal::kRequestIdPayload, absl::Cord(info.request_id));
    }
    if (info.retry_after.has_value()) {
      out.SetPayload(client_internal::kRetryAfterPayload,
                     absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(*info.retry_after))));
    }
    return out;
  }

  // After failed attempt number `attempt`: sleeps the backoff and returns true when another
  // attempt is allowed and fits before `deadline`.
  bool WaitToRetry(const absl::Status& s, int attempt, int max_attempts, absl::Time deadline) const {
    if (s.ok() || attempt >= max_attempts || !client_internal::Retryable(s)) return false;
    const absl::Duration delay = client_internal::Backoff(options.retry, attempt, RetryAfterOf(s));
    if (absl::Now() + delay >= deadline) return false;
    absl::SleepFor(delay);
    return true;
  }

  // Runs `attempt(ctx)` (which returns the grpc::Status of one attempt) with retries when
  // `idempotent`.
  template <typename Attempt>
  absl::Status WithRetries(const CallOptions& call, bool idempotent, Attempt attempt,
                           const std::string& adapter = "") {
    const absl::Time deadline = DeadlineOf(call);
    const int max_attempts = MaxAttempts(call, idempotent);
    for (int n = 1;; ++n) {
      grpc::ClientContext ctx;
      Prepare(&ctx, call, deadline, adapter);
      absl::Status s = attempt(&ctx, n);
      if (!WaitToRetry(s, n, max_attempts, deadline)) return s;
    }
  }

  template <typename Rpc, typename Request, typename Response>
  absl::Status Unary(Rpc rpc, const Request& request, Response* response, const CallOptions& call,
                     bool idempotent) {
    return WithRetries(call, idempotent, [&](grpc::ClientContext* ctx, int n) {
      response->Clear();
      return Complete(*ctx, rpc(ctx, request, response), call, n);
    }, client_internal::AdapterOf(request));
  }

  template <typename Response>
  absl::StatusOr<std::vector<TransferredFile>> Download(
      grpc::ClientContext* ctx, grpc::ClientReaderInterface<Response>* reader,
      const std::string& out_dir, const CallOptions& call, const ProgressCallback& progress) {
    // Made on the first message, which announces the total size (0 from a server that does not).
    std::unique_ptr<transfer::DirectoryWriter> writer;
    int64_t announced = 0;
    std::vector<TransferredFile> files;
    Response msg;
    absl::Status local;
    TransferProgress p;
    // The writer's InvalidArgument means the server's stream was bad: DataLoss for the caller.
    auto from_server = [](absl::Status s) {
      return s.code() == absl::StatusCode::kInvalidArgument ? absl::DataLossError(s.message()) : s;
    };
    while (reader->Read(&msg)) {
      if (!local.ok()) continue;  // drain after a local error; the call is being cancelled
      if (writer == nullptr) {
        announced = msg.total_bytes();
        p.total_bytes = announced;
        writer = std::make_unique<transfer::DirectoryWriter>(out_dir,
                                                             announced > 0 ? announced : INT64_MAX);
      }
      const client_internal::pb::FileChunk& chunk = msg.chunk();
      local = from_server(writer->Add(chunk));
      if (!local.ok()) {
        ctx->TryCancel();
        continue;
      }
      if (chunk.eof()) files.push_back({chunk.path(), chunk.size(), chunk.sha256()});
      if (progress) {
        p.path = chunk.path();
        p.bytes_done += static_cast<int64_t>(chunk.data().size());
        p.total_bytes = std::max(p.total_bytes, p.bytes_done);
        if (chunk.eof()) ++p.files_done;
        progress(p);
      }
    }
    absl::Status s = Complete(*ctx, reader->Finish(), call, 1);
    if (!local.ok()) return local;
    if (!s.ok()) return s;
    if (writer != nullptr) {
      absl::Status finished = from_server(writer->Finish(announced));
      if (!finished.ok()) return finished;
    }
    return files;
  }
};

}  // namespace loraserve

#endif  // LORASERVE_CLIENT_CLIENT_INTERNAL_H_
