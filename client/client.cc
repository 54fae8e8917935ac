#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "loraserve/v1/inference_service.grpc.pb.h"
#include "transfer/file_transfer.h"

namespace loraserve {
namespace {

namespace fs = std::filesystem;
namespace pb = ::loraserve::v1;

constexpr char kRequestIdKey[] = "x-request-id";
constexpr char kAuthorizationKey[] = "authorization";
constexpr char kRetryAfterKey[] = "retry-after-ms";
constexpr char kRequestIdPayload[] = "type.loraserve.dev/request-id";
constexpr char kRetryAfterPayload[] = "type.loraserve.dev/retry-after-ms";
std::string ToString(const grpc::string_ref& s) { return std::string(s.data(), s.size()); }

void ReadTrailers(const grpc::ClientContext& ctx, CallInfo* info) {
  const auto& md = ctx.GetServerTrailingMetadata();
  if (auto it = md.find(kRequestIdKey); it != md.end()) info->request_id = ToString(it->second);
  if (auto it = md.find(kRetryAfterKey); it != md.end()) {
    int64_t ms = 0;
    if (absl::SimpleAtoi(ToString(it->second), &ms) && ms >= 0) {
      info->retry_after = absl::Milliseconds(ms);
    }
  }
}

AdapterInfo FromProto(const pb::Adapter& a) {
  AdapterInfo out;
  out.name = a.name();
  out.checksum = a.checksum();
  switch (a.state()) {
    case pb::ADAPTER_STATE_LOADING: out.state = AdapterState::kLoading; break;
    case pb::ADAPTER_STATE_READY: out.state = AdapterState::kReady; break;
    case pb::ADAPTER_STATE_MERGED: out.state = AdapterState::kMerged; break;
    default: out.state = AdapterState::kUnspecified; break;
  }
  switch (a.residency()) {
    case pb::RESIDENCY_RESIDENT: out.residency = Residency::kResident; break;
    case pb::RESIDENCY_EVICTED: out.residency = Residency::kEvicted; break;
    default: out.residency = Residency::kUnspecified; break;
  }
  switch (a.source()) {
    case pb::ADAPTER_SOURCE_ADAPTER_ROOT: out.source = AdapterSource::kAdapterRoot; break;
    case pb::ADAPTER_SOURCE_UPLOAD: out.source = AdapterSource::kUpload; break;
    case pb::ADAPTER_SOURCE_COMBINED: out.source = AdapterSource::kCombined; break;
    default: out.source = AdapterSource::kUnspecified; break;
  }
  out.path = a.path();
  out.bytes = a.bytes();
  out.max_rank = a.max_rank();
  out.ranks.assign(a.ranks().begin(), a.ranks().end());
  out.target_modules.assign(a.target_modules().begin(), a.target_modules().end());
  out.dora = a.dora();
  out.has_head = a.has_head();
  out.base_model_name_or_path = a.base_model_name_or_path();
  switch (a.base_model_match()) {
    case pb::BASE_MODEL_MATCH_MATCH: out.base_model_match = BaseModelMatch::kMatch; break;
    case pb::BASE_MODEL_MATCH_MISMATCH: out.base_model_match = BaseModelMatch::kMismatch; break;
    case pb::BASE_MODEL_MATCH_UNKNOWN: out.base_model_match = BaseModelMatch::kUnknown; break;
    default: out.base_model_match = BaseModelMatch::kUnspecified; break;
  }
  out.warnings.assign(a.warnings().begin(), a.warnings().end());
  out.uses = a.uses();
  return out;
}

absl::StatusOr<pb::CombinationType> CombinationToProto(const std::string& name) {
  static const auto* kTypes = new std::map<std::string, pb::CombinationType>{
      {"linear", pb::COMBINATION_TYPE_LINEAR},
      {"cat", pb::COMBINATION_TYPE_CAT},
      {"svd", pb::COMBINATION_TYPE_SVD},
      {"ties", pb::COMBINATION_TYPE_TIES},
      {"ties_svd", pb::COMBINATION_TYPE_TIES_SVD},
      {"dare_linear", pb::COMBINATION_TYPE_DARE_LINEAR},
      {"dare_ties", pb::COMBINATION_TYPE_DARE_TIES},
      {"dare_linear_svd", pb::COMBINATION_TYPE_DARE_LINEAR_SVD},
      {"dare_ties_svd", pb::COMBINATION_TYPE_DARE_TIES_SVD},
      {"magnitude_prune", pb::COMBINATION_TYPE_MAGNITUDE_PRUNE},
      {"magnitude_prune_svd", pb::COMBINATION_TYPE_MAGNITUDE_PRUNE_SVD},
  };
  auto it = kTypes->find(name);
  if (it == kTypes->end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown combination type \"", name, "\""));
  }
  return it->second;
}

GeneratedToken TokenFromProto(const pb::GeneratedToken& t) {
  GeneratedToken out;
  out.id = t.id();
  out.index = t.index();
  out.text = t.text();
  out.logprob = t.logprob();
  for (const auto& tl : t.top_logprobs()) out.top_logprobs.push_back({tl.id(), tl.logprob()});
  return out;
}

// A local problem of the directory being uploaded (listing, reading): the caller's input.
absl::Status LocalFileError(const absl::Status& s) {
  if (s.ok() || s.code() == absl::StatusCode::kInvalidArgument) return s;
  return absl::InvalidArgumentError(s.message());
}


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

namespace {

// Whether a failed attempt may be tried again (the call itself being idempotent).
bool Retryable(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kUnavailable) return true;
  return s.code() == absl::StatusCode::kResourceExhausted && RetryAfterOf(s).has_value();
}

// Delay before retry number `retry` (1 = the first retry).
absl::Duration Backoff(const RetryPolicy& policy, int retry, std::optional<absl::Duration> server) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  if (server.has_value()) {
    return *server * std::uniform_real_distribution<double>(1.0, 1.0 + jitter)(rng);
  }
  absl::Duration d = policy.initial_backoff;
  for (int i = 1; i < retry && d < policy.max_backoff; ++i) d = d * policy.multiplier;
  d = std::min(d, policy.max_backoff);
  return d * std::uniform_real_distribution<double>(1.0 - jitter, 1.0 + jitter)(rng);
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::unique_ptr<pb::AdapterService::Stub> adapters;
  std::unique_ptr<pb::InferenceService::Stub> inference;

  absl::Time DeadlineOf(const CallOptions& call) const {
    return absl::Now() +
           (call.timeout > absl::ZeroDuration() ? call.timeout : options.default_deadline);
  }
  int MaxAttempts(const CallOptions& call, bool idempotent) const {
    if (!idempotent) return 1;
    return std::max(1, call.max_attempts > 0 ? call.max_attempts : options.retry.max_attempts);
  }

  void Prepare(grpc::ClientContext* ctx, const CallOptions& call, absl::Time deadline) const {
    ctx->set_deadline(absl::ToChronoTime(deadline));
    if (!call.request_id.empty()) ctx->AddMetadata(kRequestIdKey, call.request_id);
    if (!options.bearer_token.empty()) {
      ctx->AddMetadata(kAuthorizationKey, "Bearer " + options.bearer_token);
    }
  }

  // The call's final status with the server's trailing metadata attached.
  static absl::Status Complete(const grpc::ClientContext& ctx, const grpc::Status& s,
                               const CallOptions& call, int attempt) {
    CallInfo info;
    ReadTrailers(ctx, &info);
    info.attempts = attempt;
    if (call.info != nullptr) *call.info = info;
    if (s.ok()) return absl::OkStatus();
    absl::Status out(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    if (!info.request_id.empty()) out.SetPayload(kRequestIdPayload, absl::Cord(info.request_id));
    if (info.retry_after.has_value()) {
      out.SetPayload(kRetryAfterPayload,
                     absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(*info.retry_after))));
    }
    return out;
  }

  // After failed attempt number `attempt`: sleeps the backoff and returns true when another
  // attempt is allowed and fits before `deadline`.
  bool WaitToRetry(const absl::Status& s, int attempt, int max_attempts, absl::Time deadline) const {
    if (s.ok() || attempt >= max_attempts || !Retryable(s)) return false;
    const absl::Duration delay = Backoff(options.retry, attempt, RetryAfterOf(s));
    if (absl::Now() + delay >= deadline) return false;
    absl::SleepFor(delay);
    return true;
  }

  // Runs `attempt(ctx)` (which returns the grpc::Status of one attempt) with retries when
  // `idempotent`.
  template <typename Attempt>
  absl::Status WithRetries(const CallOptions& call, bool idempotent, Attempt attempt) {
    const absl::Time deadline = DeadlineOf(call);
    const int max_attempts = MaxAttempts(call, idempotent);
    for (int n = 1;; ++n) {
      grpc::ClientContext ctx;
      Prepare(&ctx, call, deadline);
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
    });
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
      const pb::FileChunk& chunk = msg.chunk();
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

namespace {

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
    impl_->Prepare(ctx.get(), call_, deadline_);
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
    switch (s.finish_reason()) {
      case pb::FINISH_REASON_LENGTH: result_.finish_reason = FinishReason::kLength; break;
      case pb::FINISH_REASON_EOS: result_.finish_reason = FinishReason::kEos; break;
      case pb::FINISH_REASON_STOP: result_.finish_reason = FinishReason::kStop; break;
      default: result_.finish_reason = FinishReason::kUnspecified; break;
    }
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
  pb::LoadAdapterRequest req;
  req.set_name(name);
  req.set_path(path);
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
  impl_->Prepare(&ctx, call, impl_->DeadlineOf(call));
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
