#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/engine/engine.h"
#include "server/adapter_service.h"
#include "server/auth.h"
#include "server/durable_state.h"
#include "server/inference_service.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/service_env.h"
#include "server/tls.h"
#include "server/work_pool.h"
#include "transfer/file_transfer.h"

namespace loraserve::server {

namespace fs = std::filesystem;

Server::Server() = default;

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  std::unique_ptr<Server> s(new Server());
  s->env_ = std::make_unique<ServiceEnv>();
  ServiceEnv& env = *s->env_;
  env.logger = Logger(options.log_sink);

  // Credentials and tokens first: a bad file must fail before anything is bound or created.
  TlsFiles tls;
  tls.cert_file = options.tls_cert_file;
  tls.key_file = options.tls_key_file;
  tls.client_ca_file = options.tls_client_ca_file;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentialsFromFiles(tls);
  if (!credentials.ok()) return credentials.status();
  std::shared_ptr<const TenantDirectory> tenants = TenantDirectory::SingleTenant({});
  if (!options.auth_tokens_file.empty() && !options.tenants_file.empty()) {
    return absl::InvalidArgumentError(
        "--auth_tokens_file and --tenants_file exclude each other (list the tokens in the tenants file)");
  }
  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<BearerTokenAuth>> auth =
        BearerTokenAuth::FromFile(options.auth_tokens_file);
    if (!auth.ok()) return auth.status();
    tenants = TenantDirectory::SingleTenant((*auth)->digests());
  }
  if (!options.tenants_file.empty()) {
    absl::StatusOr<std::shared_ptr<const TenantDirectory>> d = TenantDirectory::FromFile(options.tenants_file);
    if (!d.ok()) return d.status();
    tenants = *std::move(d);
    s->tenants_file_ = options.tenants_file;
  }

  std::error_code ec;
  if (!options.adapter_root.empty()) {
    const fs::path root = fs::canonical(options.adapter_root, ec);
    if (ec || !fs::is_directory(root)) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter root ", options.adapter_root, " is not a directory"));
    }
    env.config.adapter_root = root.string();
    env.path_aliases.push_back({env.config.adapter_root, "<adapter_root>"});
  }
  if (options.upload_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    auto dir = transfer::MakeUniqueDir(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "loraserve-");
    if (!dir.ok()) return dir.status();
    s->private_upload_dir_ = *dir;
    env.config.upload_dir = *dir;
  } else {
    fs::create_directories(options.upload_dir, ec);
    const fs::path dir = fs::canonical(options.upload_dir, ec);
    if (ec || !fs::is_directory(dir)) {
      return absl::InvalidArgumentError(
          absl::StrCat("upload directory ", options.upload_dir, " cannot be created"));
    }
    env.config.upload_dir = dir.string();
  }
  env.path_aliases.push_back({env.config.upload_dir, "<upload_dir>"});
  env.config.scratch_dir = env.config.upload_dir;
  if (!options.state_dir.empty()) {
    absl::StatusOr<std::unique_ptr<StateStore>> state = StateStore::Open(options.state_dir);
    if (!state.ok()) return state.status();
    env.state = *std::move(state);
    // Uploads are written where they stay: the state directory keeps them.
    env.config.upload_dir = env.state->files_dir();
    env.path_aliases.push_back({env.state->dir(), "<state_dir>"});
  }
  env.config.max_upload_bytes = options.max_upload_bytes;
  env.config.load_on_miss = options.adapter_load_on_miss;
  env.config.restore_register_only = options.restore_register_only;
  if (options.adapter_load_on_miss && env.config.adapter_root.empty()) {
    return absl::InvalidArgumentError("--adapter_load_on_miss needs --adapter_root");
  }
  env.tenants = std::make_unique<TenantRegistry>(tenants, env.config.adapter_root);
  if (!options.audit_log.empty()) {
    absl::StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(options.audit_log);
    if (!audit.ok()) return audit.status();
    env.audit = *std::move(audit);
  }
  env.config.max_message_bytes = options.max_message_bytes;
  // Leave room for the chunk's other fields and the message framing.
  env.config.file_chunk_bytes =
      std::max<int64_t>(1024, std::min<int64_t>(1 << 20, options.max_message_bytes - 4096));

  MetricsOptions mopts;
  mopts.max_adapter_labels = options.max_adapter_labels;
  mopts.max_tenant_labels = options.max_tenant_labels;
  s->metrics_ = std::make_unique<Metrics>(mopts);
  env.metrics = s->metrics_.get();
  if (!options.metrics_listen.empty()) {
    s->http_ = std::make_unique<HttpEndpoint>(options.http);
    Metrics* metrics = s->metrics_.get();
    s->http_->Handle("/metrics", [metrics] {
      return HttpEndpoint::Reply(200, metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    s->http_->Handle("/healthz", [] { return HttpEndpoint::Reply(200, "ok\n"); });
    Server* self = s.get();
    s->http_->Handle("/readyz", [self] {
      if (self->serving_) return HttpEndpoint::Reply(200, "ready\n");
      return HttpEndpoint::Reply(
          503, self->env_->engine.draining() ? "not ready: draining\n" : "not ready: loading the model\n");
    });
    s->openai_ = std::make_unique<OpenAiApi>(s->env_.get(), options.http.completion_heartbeat);
    s->openai_->Register(s->http_.get());
    absl::Status m = s->http_->Start(options.metrics_listen);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat("metrics endpoint: ", m.message()));
  }
  s->pool_ = std::make_unique<WorkPool>(std::max(1, options.io_threads));
  env.pool = s->pool_.get();
  s->adapter_service_ = std::make_unique<AdapterService>(&env);
  s->inference_service_ = std::make_unique<InferenceService>(&env);

  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection (grpc.reflection.v1alpha) so grpcurl-style tools can discover the API.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, *credentials, &s->port_);
  const int max_message = static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  builder.RegisterService(s->adapter_service_.get());
  builder.RegisterService(s->inference_service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->server_.reset();
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", options.listen_address));
  }
  s->SetServing(false);
  env.logger.Log(absl::StrFormat(
      "event=listening port=%d metrics_port=%d tls=%s auth=%s", s->port_, s->metrics_port(),
      options.tls_cert_file.empty() ? "off" : options.tls_client_ca_file.empty() ? "on" : "mutual",
      !tenants->requires_token() ? "off"
      : tenants->namespaced()    ? absl::StrCat("tenants(", tenants->tenants().size(), ")")
                                 : absl::StrCat("bearer(", tenants->tenants().front().token_digests.size(), " tokens)")));
  return s;
}

Server::~Server() {
  if (http_ != nullptr) http_->Stop();
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  if (std::shared_ptr<core::Engine> engine = env_ != nullptr ? env_->engine.engine() : nullptr) {
    engine->SetStepObserver(nullptr);
    engine->Shutdown(absl::Now());
  }
  pool_.reset();  // runs the clean-up tasks still queued
  if (env_ != nullptr) {
    // Under --state_dir the files outlive the process (the records name them).
    for (const AdapterProvenance& p : env_->book.ForgetAll()) {
      if (env_->state == nullptr && !p.upload_dir.empty()) transfer::RemoveTree(p.upload_dir);
    }
  }
  transfer::RemoveTree(private_upload_dir_);
}

int Server::metrics_port() const { return http_ != nullptr ? http_->port() : 0; }

void Server::AttachEngine(std::shared_ptr<core::Engine> engine) {
  // Before any call is admitted and before health says SERVING.
  (void)RestoreState(*env_, *engine);
  Metrics* metrics = metrics_.get();
  engine->SetStepObserver([metrics](int batch_size, int distinct_adapters, int new_tokens,
                                    absl::Duration step_time) {
    metrics->RecordStep(batch_size, distinct_adapters, new_tokens, step_time);
  });
  ServiceEnv* env = env_.get();
  metrics_->AttachEngine(engine, [env] { return env->book.loading_count(); });
  env_->engine.Attach(engine);
  env_->logger.Log(absl::StrCat("event=engine_ready model=", LogValue(engine->model_name()),
                                " vocab=", engine->vocab_size(), " context=", engine->max_context()));
  if (!env_->engine.draining()) SetServing(true);
}

void Server::SetServing(bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(serving);
  serving_ = serving;
}

void Server::Shutdown(absl::Duration grace) {
  const absl::Time deadline = absl::Now() + grace;
  env_->engine.SetDraining();
  SetServing(false);
  env_->logger.Log(absl::StrCat("event=draining grace=", absl::FormatDuration(grace)));
  // In-flight requests run until the deadline (the engine cancels what is left then); their
  // reactors finish from the engine's callbacks, so the gRPC shutdown below returns promptly.
  if (std::shared_ptr<core::Engine> engine = env_->engine.engine()) engine->Shutdown(deadline);
  server_->Shutdown(absl::ToChronoTime(deadline));
  env_->logger.Log("event=stopped");
}

void Server::Wait() { server_->Wait(); }

absl::Status Server::ReloadTenants() {
  if (tenants_file_.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<std::function<void()>>> admitted = env_->tenants->Reload(tenants_file_);
  const absl::Status s = admitted.status();
  if (s.ok()) {
    // Requests a raised concurrency limit lets in.
    for (auto& resume : *admitted) env_->pool->Post(std::move(resume));
    env_->logger.Log(absl::StrCat("event=tenants_reloaded tenants=", env_->tenants->directory()->tenants().size()));
  } else {
    env_->logger.Log(absl::StrCat("event=tenants_reload_failed kept=current error=", LogValue(s.message())));
  }
  return s;
}

}  // namespace loraserve::server
