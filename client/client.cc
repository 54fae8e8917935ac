#include "client/client.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/client_internal.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "transfer/file_transfer.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;
namespace pb = ::loraserve::v1;

using client_internal::CombinationToProto;
using client_internal::FromProto;
using client_internal::kRequestIdPayload;
using client_internal::kRetryAfterPayload;
using client_internal::LocalFileError;

}  // namespace

std::string RequestIdOf(const absl::Status& status) {
  auto p = status.GetPayload(kRequestIdPayload);
  return p.has_value() ? std::string(*p) : std::string();
}

std::optional<absl::Duration> RetryAfterOf(const absl::Status& status) {
  auto p = status.GetPayload(kRetryAfterPayload);
  int64_t ms = 0;
  if (!p.has_value() || !absl::SimpleAtoi(std::string(*p), &ms)) return std::nullopt;
  return absl::Milliseconds(ms);
}

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing: return "SERVING";
    case ServingStatus::kNotServing: return "NOT_SERVING";
    case ServingStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown: break;
  }
  return "UNKNOWN";
}

const char* AdapterStateName(AdapterState state) {
  switch (state) {
    case AdapterState::kLoading: return "loading";
    case AdapterState::kReady: return "ready";
    case AdapterState::kMerged: return "merged";
    case AdapterState::kUnspecified: break;
  }
  return "unspecified";
}

const char* ResidencyName(Residency residency) {
  switch (residency) {
    case Residency::kResident: return "resident";
    case Residency::kEvicted: return "evicted";
    case Residency::kNotLoaded: return "not_loaded";
    case Residency::kUnspecified: break;
  }
  return "unspecified";
}

const char* AdapterSourceName(AdapterSource source) {
  switch (source) {
    case AdapterSource::kAdapterRoot: return "adapter_root";
    case AdapterSource::kUpload: return "upload";
    case AdapterSource::kCombined: return "combined";
    case AdapterSource::kUnspecified: break;
  }
  return "unspecified";
}

const char* BaseModelMatchName(BaseModelMatch match) {
  switch (match) {
    case BaseModelMatch::kMatch: return "match";
    case BaseModelMatch::kMismatch: return "mismatch";
    case BaseModelMatch::kUnknown: return "unknown";
    case BaseModelMatch::kUnspecified: break;
  }
  return "unspecified";
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kUnspecified: break;
  }
  return "unspecified";
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("empty server address");
  if (options.upload_chunk_bytes <= 0) {
    return absl::InvalidArgumentError("upload_chunk_bytes must be positive");
  }
  if (options.retry.max_attempts < 1 || options.retry.multiplier < 1 ||
      options.retry.initial_backoff < absl::ZeroDuration() ||
      options.retry.max_backoff < options.retry.initial_backoff || options.retry.jitter < 0 ||
      options.retry.jitter > 1) {
    return absl::InvalidArgumentError(
        "retry policy needs max_attempts >= 1, multiplier >= 1, 0 <= initial_backoff <= "
        "max_backoff and jitter in [0, 1]");
  }
  for (char c : options.bearer_token) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError("bearer token must be printable ASCII without spaces");
    }
  }
  const TlsOptions& tls = options.tls;
  if (tls.client_cert_pem.empty() != tls.client_key_pem.empty()) {
    return absl::InvalidArgumentError("TLS client certificate and key go together");
  }
  if (!tls.enabled && (!tls.root_certs_pem.empty() || !tls.client_cert_pem.empty() ||
                       !tls.server_name_override.empty())) {
    return absl::InvalidArgumentError("TLS options given but TLS is not enabled");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_receive_message_bytes, INT32_MAX)));
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (tls.enabled) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = tls.root_certs_pem;
    ssl.pem_cert_chain = tls.client_cert_pem;
    ssl.pem_private_key = tls.client_key_pem;
    creds = grpc::SslCredentials(ssl);
    if (!tls.server_name_override.empty()) args.SetSslTargetNameOverride(tls.server_name_override);
  }
  impl->channel = grpc::CreateCustomChannel(options.address, creds, args);
  impl->health = grpc::health::v1::Health::NewStub(impl->channel);
  impl->adapters = pb::AdapterService::NewStub(impl->channel);
  impl->inference = pb::InferenceService::NewStub(impl->channel);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

absl::StatusOr<ServingStatus> Client::Health(const std::string& service, const CallOptions& call) {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->health->Check(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  switch (resp.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING: return ServingStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING: return ServingStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ServingStatus::kServiceUnknown;
    default: return ServingStatus::kUnknown;
  }
}

absl::StatusOr<AdapterInfo> Client::LoadAdapter(const std::string& name, const std::string& path,
                                                const CallOptions& call) {
  return LoadOrRegister(name, path, /*register_only=*/false, call);
}

absl::StatusOr<AdapterInfo> Client::RegisterAdapter(const std::string& name, const std::string& path,
                                                    const CallOptions& call) {
  return LoadOrRegister(name, path, /*register_only=*/true, call);
}

absl::StatusOr<AdapterInfo> Client::LoadOrRegister(const std::string& name, const std::string& path,
                                                   bool register_only, const CallOptions& call) {
  pb::LoadAdapterRequest req;
  req.set_name(name);
  req.set_path(path);
  req.set_register_only(register_only);
  pb::LoadAdapterResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->LoadAdapter(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  AdapterInfo out = FromProto(resp.adapter());
  out.already_loaded = resp.already_loaded();
  return out;
}

absl::StatusOr<AdapterInfo> Client::UploadAdapter(const std::string& name, const std::string& dir,
                                                  const CallOptions& call,
                                                  const ProgressCallback& progress) {
  // List the files first: the server wants the total size up front.
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot list ", dir, ": ", ec ? ec.message() : std::string("not a directory")));
  }
  const int64_t chunk_bytes = impl_->options.upload_chunk_bytes;
  absl::StatusOr<std::unique_ptr<transfer::DirectoryReader>> listed =
      transfer::DirectoryReader::Open(dir, chunk_bytes);
  if (!listed.ok()) return LocalFileError(listed.status());
  if ((*listed)->num_files() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " has no files"));
  }
  const int64_t total = (*listed)->total_bytes();

  pb::UploadAdapterResponse resp;
  // One attempt: the whole directory again (the server answers OK for an identical adapter that
  // an earlier attempt loaded).
  auto attempt = [&](grpc::ClientContext* ctx, int n) -> absl::Status {
    resp.Clear();
    std::unique_ptr<grpc::ClientWriter<pb::UploadAdapterRequest>> writer =
        impl_->adapters->UploadAdapter(ctx, &resp);
    pb::UploadAdapterRequest first;
    first.set_name(name);
    first.set_total_bytes(total);
    bool open = writer->Write(first);
    absl::Status local;
    absl::StatusOr<std::unique_ptr<transfer::DirectoryReader>> files =
        transfer::DirectoryReader::Open(dir, chunk_bytes);
    if (!files.ok()) local = LocalFileError(files.status());
    TransferProgress p;
    p.total_bytes = total;
    while (open && local.ok()) {
      pb::UploadAdapterRequest msg;
      absl::StatusOr<bool> more = (*files)->Next(msg.mutable_chunk());
      if (!more.ok()) {
        local = LocalFileError(more.status());
        break;
      }
      if (!*more) break;
      open = writer->Write(msg);
      if (open && progress) {
        p.path = msg.chunk().path();
        p.bytes_done += static_cast<int64_t>(msg.chunk().data().size());
        if (msg.chunk().eof()) ++p.files_done;
        progress(p);
      }
    }
    if (!local.ok()) ctx->TryCancel();
    if (open) writer->WritesDone();
    absl::Status s = Impl::Complete(*ctx, writer->Finish(), call, n);
    return local.ok() ? s : local;
  };
  absl::Status s = impl_->WithRetries(call, /*idempotent=*/true, attempt);
  if (!s.ok()) return s;
  AdapterInfo out = FromProto(resp.adapter());
  out.already_loaded = resp.already_loaded();
  return out;
}

absl::StatusOr<AdapterInfo> Client::GetAdapter(const std::string& name, const CallOptions& call) {
  pb::GetAdapterRequest req;
  req.set_name(name);
  pb::GetAdapterResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->GetAdapter(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  return FromProto(resp.adapter());
}

absl::StatusOr<std::vector<AdapterInfo>> Client::ListAdapters(const CallOptions& call) {
  pb::ListAdaptersRequest req;
  pb::ListAdaptersResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->ListAdapters(c, q, r); },
      req, &resp, call, /*idempotent=*/true);
  if (!s.ok()) return s;
  std::vector<AdapterInfo> out;
  for (const auto& a : resp.adapters()) out.push_back(FromProto(a));
  return out;
}

absl::Status Client::DeleteAdapter(const std::string& name, const CallOptions& call) {
  pb::DeleteAdapterRequest req;
  req.set_name(name);
  pb::DeleteAdapterResponse resp;
  return impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->DeleteAdapter(c, q, r); },
      req, &resp, call, /*idempotent=*/false);
}

absl::StatusOr<MergeResult> Client::MergeAdapter(const std::string& name, const CallOptions& call) {
  pb::MergeAdapterRequest req;
  req.set_name(name);
  pb::MergeAdapterResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->MergeAdapter(c, q, r); },
      req, &resp, call, /*idempotent=*/false);
  if (!s.ok()) return s;
  MergeResult out;
  out.already_merged = resp.already_merged();
  out.adapter = FromProto(resp.adapter());
  return out;
}

absl::StatusOr<AdapterInfo> Client::UnmergeAdapter(const std::string& name, const CallOptions& call) {
  pb::UnmergeAdapterRequest req;
  req.set_name(name);
  pb::UnmergeAdapterResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->UnmergeAdapter(c, q, r); },
      req, &resp, call, /*idempotent=*/false);
  if (!s.ok()) return s;
  return FromProto(resp.adapter());
}

absl::StatusOr<int> Client::UnloadAll(const CallOptions& call) {
  pb::UnloadAllRequest req;
  pb::UnloadAllResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->UnloadAll(c, q, r); },
      req, &resp, call, /*idempotent=*/false);
  if (!s.ok()) return s;
  return resp.deleted();
}

absl::StatusOr<AdapterInfo> Client::CombineAdapters(const CombineRequest& request,
                                                    const CallOptions& call) {
  pb::CombineAdaptersRequest req;
  req.set_name(request.name);
  for (const auto& s : request.sources) {
    pb::WeightedAdapter* w = req.add_sources();
    w->set_name(s.name);
    w->set_weight(s.weight);
  }
  absl::StatusOr<pb::CombinationType> type = CombinationToProto(request.combination_type);
  if (!type.ok()) return type.status();
  req.set_combination_type(*type);
  req.set_svd_rank(request.svd_rank);
  req.set_svd_clamp(request.svd_clamp);
  req.set_density(request.density);
  if (request.majority_sign_method == "total") {
    req.set_majority_sign_method(pb::MAJORITY_SIGN_METHOD_TOTAL);
  } else if (request.majority_sign_method == "frequency") {
    req.set_majority_sign_method(pb::MAJORITY_SIGN_METHOD_FREQUENCY);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown majority sign method \"", request.majority_sign_method, "\""));
  }
  req.set_seed(request.seed);
  pb::CombineAdaptersResponse resp;
  absl::Status s = impl_->Unary(
      [&](grpc::ClientContext* c, const auto& q, auto* r) { return impl_->adapters->CombineAdapters(c, q, r); },
      req, &resp, call, /*idempotent=*/false);
  if (!s.ok()) return s;
  return FromProto(resp.adapter());
}

absl::StatusOr<std::vector<TransferredFile>> Client::SaveAdapter(const std::string& name,
                                                                 const std::string& out_dir,
                                                                 const CallOptions& call,
                                                                 const ProgressCallback& progress) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx, call, impl_->DeadlineOf(call), name);
  pb::SaveAdapterRequest req;
  req.set_name(name);
  auto reader = impl_->adapters->SaveAdapter(&ctx, req);
  return impl_->Download(&ctx, reader.get(), out_dir, call, progress);
}

absl::StatusOr<std::vector<TransferredFile>> Client::ExportMergedModel(
    const std::vector<std::string>& adapters, const std::string& out_dir, const CallOptions& call,
    const ProgressCallback& progress) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx, call, impl_->DeadlineOf(call));
  pb::ExportMergedModelRequest req;
  for (const auto& a : adapters) req.add_adapters(a);
  auto reader = impl_->adapters->ExportMergedModel(&ctx, req);
  return impl_->Download(&ctx, reader.get(), out_dir, call, progress);
}

}  // namespace loraserve
