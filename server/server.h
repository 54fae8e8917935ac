// The loraserve gRPC server: owns the grpc::Server, the AdapterService and InferenceService, the
// standard health service, reflection, and the HTTP port (/metrics, /healthz, /readyz).
//
// Start() binds and serves at once with health NOT_SERVING; every AdapterService /
// InferenceService call answers UNAVAILABLE until AttachEngine() hands over an engine that has
// loaded the model and run its warm-up, which turns health SERVING. Shutdown() drains: health goes
// NOT_SERVING, new calls get UNAVAILABLE, requests in flight may finish until the grace period
// ends, then the rest are cancelled.
//
// Thread-safe: AttachEngine, SetServing and Shutdown may be called from any thread (e.g. a signal
// watcher).
#ifndef LORASERVE_SERVER_SERVER_H_
#define LORASERVE_SERVER_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/http_endpoint.h"
#include "server/logging.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace loraserve::core {
class Engine;
}  // namespace loraserve::core

namespace loraserve::server {

struct ServiceEnv;
class Metrics;
class WorkPool;
class AdapterService;
class InferenceService;
class OpenAiApi;

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see Server::port()).
  std::string listen_address = "127.0.0.1:50051";
  // host:port of the plain-HTTP port; "" = none. Port 0 picks a free port. It serves /metrics
  // (Prometheus), /healthz (200 while the process serves) and /readyz (200 once the engine is
  // attached and while not draining, else 503: the gRPC health status as HTTP).
  std::string metrics_listen;
  // Threads, queue, request size and time limits of that port.
  HttpOptions http;
  // Directory LoadAdapter paths are relative to; "" refuses LoadAdapter (UploadAdapter still works).
  std::string adapter_root;
  // Load-on-miss (LoRAX's behaviour): a request naming an adapter that is not loaded loads
  // <adapter_root>/<name> first, as LoadAdapter would (needs adapter_root).
  bool adapter_load_on_miss = false;
  // Adapters restored from state_dir are registered only (weights loaded on first use); set when
  // an adapter budget bounds the resident weights.
  bool restore_register_only = false;
  // Where uploads and files being saved/exported are written; "" = a private temporary directory
  // removed when the server is destroyed. Created if missing.
  std::string upload_dir;
  // Largest UploadAdapter in bytes (all files together).
  int64_t max_upload_bytes = 1ll << 30;
  // Largest gRPC message in either direction, in bytes; Score replies that would exceed it are
  // refused with InvalidArgument.
  int64_t max_message_bytes = 64ll << 20;
  // Distinct adapter label values in metrics before they overflow to "other".
  int max_adapter_labels = 32;
  // Threads for blocking file work (adapter loads, uploads, file streaming).
  int io_threads = 2;
  // TLS on the gRPC port (/metrics stays plain HTTP): PEM certificate chain and private key files,
  // both or neither (neither = plaintext).
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA certificate(s) file: clients must present a certificate it signed (mutual TLS). Needs
  // the two above.
  std::string tls_client_ca_file;
  // Bearer tokens file, one per line (blank lines and lines starting with # ignored): every
  // loraserve.v1 call must then carry `authorization: Bearer <token>` with one of them, else
  // UNAUTHENTICATED. grpc.health.v1 and reflection stay open. "" = no authentication.
  std::string auth_tokens_file;
  // Tenants file (JSON; README "Tenants"): tenants with their tokens, roles, quotas and adapter
  // namespaces. Excludes auth_tokens_file. "" = one tenant (the tokens file's, or open).
  std::string tenants_file;
  // Audit log (JSON lines, appended): every management call with tenant, call, adapter and result.
  // "" = none.
  std::string audit_log;
  // Durable state (README "Durable state"): adapters loaded, uploaded, combined and merged are
  // recorded here before each call is acknowledged and restored by AttachEngine before health
  // turns SERVING; uploads are written below it. Created if missing. "" = nothing survives a
  // restart.
  std::string state_dir;
  // Distinct tenant label values in metrics before they overflow to "other".
  int max_tenant_labels = 64;
  // Where access and event log lines go; null = stderr.
  LogSink log_sink;
};

class Server {
 public:
  // Binds and starts serving (health NOT_SERVING). InvalidArgument if an address cannot be bound,
  // the adapter root is not a directory, the upload directory cannot be created, a TLS file is
  // missing, unreadable or invalid (or only one of certificate and key is given), or the auth
  // tokens file is missing, unreadable or has no token.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  // The /metrics HTTP port; 0 without one.
  int metrics_port() const;

  // Starts using `engine` (already loaded and warmed up): restores --state_dir's adapters into
  // it, installs the metrics step observer and turns health SERVING unless draining. Call once.
  void AttachEngine(std::shared_ptr<core::Engine> engine);
  // grpc.health.v1 status of the server as a whole ("" service).
  void SetServing(bool serving);
  // Health goes NOT_SERVING and new calls are refused (UNAVAILABLE); requests in flight get up to
  // `grace` to finish, then are cancelled. Returns when everything has stopped. Idempotent.
  void Shutdown(absl::Duration grace);
  // Blocks until Shutdown has completed.
  void Wait();
  // Rereads --tenants_file (SIGHUP): calls in flight keep their tenant; on an error the current
  // tenants stay and the error is returned (and logged). OK and nothing done without the file.
  absl::Status ReloadTenants();

 private:
  Server();
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<OpenAiApi> openai_;
  std::unique_ptr<HttpEndpoint> http_;  // stopped first in ~Server: its handlers read the rest
  std::atomic<bool> serving_{false};
  std::unique_ptr<WorkPool> pool_;
  std::unique_ptr<ServiceEnv> env_;
  std::unique_ptr<AdapterService> adapter_service_;
  std::unique_ptr<InferenceService> inference_service_;
  std::unique_ptr<grpc::Server> server_;
  std::string private_upload_dir_;  // removed in the destructor
  std::string tenants_file_;
  int port_ = 0;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_SERVER_H_
