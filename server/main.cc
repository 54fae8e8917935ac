// loraserve: multi-tenant LoRA serving over gRPC. Flags are defined here and only here.
//
// Start-up: bind gRPC (health NOT_SERVING) and /metrics, load the model and run the warm-up, then
// turn SERVING and write --port_file. SIGTERM / SIGINT: health NOT_SERVING, in-flight requests get
// --shutdown_grace to finish, exit 0. Exit 1 when start-up fails.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/engine/engine.h"
#include "server/server.h"

#ifndef LORASERVE_DEFAULT_MODEL_DIR
#define LORASERVE_DEFAULT_MODEL_DIR ""
#endif

ABSL_FLAG(std::string, model, "",
          "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json); empty = "
          "the built-in demo model: <prefix>/share/loraserve/default-model next to an installed "
          "binary, else the one the build wrote (" LORASERVE_DEFAULT_MODEL_DIR ")");
ABSL_FLAG(std::string, dtype, "float32", "compute dtype: float32 | bfloat16 | float16 (float16 on CUDA only)");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda[:N] (needs the CUDA flavour, make build-cuda, and a visible GPU)");
ABSL_FLAG(int, threads, 0, "LibTorch intra-op threads; 0 = hardware concurrency");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "host:port for gRPC (port 0 = any free port)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "host:port for the plain-HTTP port: /metrics (Prometheus), /healthz (liveness), /readyz "
          "(200 once the model is loaded and while not draining, else 503) (port 0 = any free "
          "port; empty = none)");
ABSL_FLAG(int, http_threads, 16,
          "threads serving the HTTP port: requests served at once (each OpenAI API request holds "
          "one until it finishes)");
ABSL_FLAG(int, http_max_queue, 64,
          "accepted HTTP connections waiting for a thread; beyond it new connections wait in the "
          "kernel's listen backlog");
ABSL_FLAG(int64_t, http_max_request_bytes, 64 << 10,
          "largest HTTP request body in bytes (larger: 413); header lines are limited to 8 KiB");
ABSL_FLAG(absl::Duration, http_timeout, absl::Seconds(5),
          "longest wait for each read or write of an HTTP request; a client idle that long is "
          "disconnected");
ABSL_FLAG(int, http_keep_alive_max_requests, 100, "HTTP requests per connection before it is closed");
ABSL_FLAG(absl::Duration, http_completion_heartbeat, absl::Seconds(1),
          "a non-streaming /v1/completions still running after this long answers 200 and sends a "
          "space every period until its JSON body, so a client that disconnects cancels its request "
          "(a failure after that point comes as OpenAI error JSON in the 200 body)");
ABSL_FLAG(std::string, adapter_root, "",
          "directory that LoadAdapter paths are relative to (paths escaping it are refused); "
          "empty = LoadAdapter is refused, UploadAdapter still works");
ABSL_FLAG(bool, adapter_load_on_miss, false,
          "a request naming an adapter that is not loaded loads <adapter_root>/<name> first (LoRAX's "
          "behaviour; the load runs on that request's thread, other adapters' requests do not wait); "
          "needs --adapter_root");
ABSL_FLAG(std::string, upload_dir, "",
          "where uploaded adapters and files being saved/exported are written; empty = a private "
          "temporary directory removed at exit");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{1} << 30, "largest UploadAdapter, in bytes");
ABSL_FLAG(int, max_batch_size, 32, "sequences per engine step");
ABSL_FLAG(int, max_batch_tokens, 2048,
          "new tokens per engine step; longer prompts are prefilled in chunks");
ABSL_FLAG(absl::Duration, max_wait, absl::Milliseconds(2),
          "how long a small batch waits for more requests before it runs");
ABSL_FLAG(int, max_queue, 1024,
          "waiting requests in all; beyond it requests get RESOURCE_EXHAUSTED with retry-after-ms");
ABSL_FLAG(int, max_queue_per_adapter, 256, "waiting requests of one adapter; beyond it as above");
ABSL_FLAG(int64_t, kv_budget_bytes, int64_t{1} << 30,
          "KV-cache memory in bytes; admission waits (or preempts) when it is full");
ABSL_FLAG(int64_t, adapter_budget_bytes, 0,
          "resident adapter weights in bytes before least-recently-used adapters are evicted "
          "(reloaded on next use); 0 = unbounded");
ABSL_FLAG(int, adapter_load_threads, 2,
          "threads loading adapters that waiting requests need (evicted or registered-only "
          "adapters); the engine thread and the RPC threads never read adapter files");
ABSL_FLAG(std::string, adapter_dtype, "float32",
          "storage dtype of adapter weights: float32, or bfloat16 (half the memory and reads; "
          "products still accumulate in float32)");
ABSL_FLAG(int64_t, max_rank, 256, "largest LoRA rank an adapter may have");
ABSL_FLAG(std::string, batch_policy, "mixed",
          "mixed: rows of different adapters share a step; single: one adapter per step, "
          "round-robin");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20,
          "largest gRPC message in bytes; Score replies beyond it are refused");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "on SIGTERM/SIGINT, how long in-flight requests may run before the server stops");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain for TLS on the gRPC port (with --tls_key_file; both or neither; "
          "/metrics stays plain HTTP)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS); "
          "needs --tls_cert_file and --tls_key_file");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens, one per line (blank lines and # comments ignored): every "
          "loraserve.v1 call must send `authorization: Bearer <token>` with one of them, else "
          "UNAUTHENTICATED; health and reflection stay open. Empty = no authentication");
ABSL_FLAG(std::string, tenants_file, "",
          "tenants (JSON, README: Tenants): each with bearer tokens, a role (admin, operator, "
          "user), quotas and its own adapter names; excludes --auth_tokens_file. SIGHUP rereads "
          "it (a bad file keeps the current tenants). Empty = one tenant");
ABSL_FLAG(std::string, audit_log, "",
          "append one JSON line per management call (load, upload, delete, merge, unmerge, "
          "unload-all, combine, save, export; gRPC and HTTP) with time, tenant, role, call, "
          "adapter, code and message to this file. Empty = no audit log");
ABSL_FLAG(std::string, state_dir, "",
          "durable state (README: Durable state): every adapter loaded, uploaded or combined and "
          "every merge is recorded here (atomically, fsynced) before the call is acknowledged, "
          "and restored on start before health turns SERVING; uploads are kept here. Created if "
          "missing. Empty = a restart forgets every adapter");
ABSL_FLAG(std::string, port_file, "",
          "if set, the bound gRPC port is written to this file once the server is ready");
ABSL_FLAG(std::string, metrics_port_file, "",
          "if set, the bound /metrics port is written to this file once the server is ready");

namespace {

void Log(const std::string& line) { std::fprintf(stderr, "loraserve: %s\n", line.c_str()); }

bool WritePortFile(const std::string& path, int port) {
  if (path.empty()) return true;
  // Written to a temporary name and renamed so a reader never sees a partial file.
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return false;
  std::fprintf(f, "%d\n", port);
  return std::fclose(f) == 0 && std::rename(tmp.c_str(), path.c_str()) == 0;
}

// The built-in demo model: the installed copy beside this binary (<prefix>/bin/loraserve →
// <prefix>/share/loraserve/default-model), else the build tree's; "" if neither exists.
std::string BuiltInModelDir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path installed =
        exe.parent_path().parent_path() / "share" / "loraserve" / "default-model";
    if (std::filesystem::is_directory(installed, ec)) return installed.string();
  }
  const std::string built = LORASERVE_DEFAULT_MODEL_DIR;
  if (!built.empty() && std::filesystem::is_directory(built, ec)) return built;
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "loraserve [--model=DIR] [--listen=HOST:PORT] [--adapter_root=DIR] [flags]\n"
      "Serves a Llama-family model and Hugging Face PEFT LoRA adapters over gRPC "
      "(loraserve.v1.AdapterService, loraserve.v1.InferenceService, grpc.health.v1).");
  // --help lists the flags defined in this file (absl's default looks for a file named after the
  // program).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);

  loraserve::core::EngineOptions engine_options;
  engine_options.model_dir = absl::GetFlag(FLAGS_model);
  if (engine_options.model_dir.empty()) engine_options.model_dir = BuiltInModelDir();
  if (engine_options.model_dir.empty()) {
    Log("no --model given and this build has no built-in default model");
    return 1;
  }
  if (std::error_code ec; !std::filesystem::is_directory(engine_options.model_dir, ec)) {
    Log(absl::StrCat("model directory \"", engine_options.model_dir,
                     "\" does not exist (pass --model=DIR, or write the demo model with "
                     "loraserve-mkmodel --out DIR)"));
    return 1;
  }
  engine_options.dtype = absl::GetFlag(FLAGS_dtype);
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.num_threads = absl::GetFlag(FLAGS_threads);
  engine_options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  engine_options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  engine_options.max_wait = absl::GetFlag(FLAGS_max_wait);
  engine_options.max_queue = absl::GetFlag(FLAGS_max_queue);
  engine_options.max_queue_per_adapter = absl::GetFlag(FLAGS_max_queue_per_adapter);
  engine_options.kv_budget_bytes = absl::GetFlag(FLAGS_kv_budget_bytes);
  engine_options.adapters.budget_bytes = absl::GetFlag(FLAGS_adapter_budget_bytes);
  engine_options.adapters.load.max_rank = absl::GetFlag(FLAGS_max_rank);
  engine_options.adapter_load_threads = absl::GetFlag(FLAGS_adapter_load_threads);
  engine_options.adapters.load.dtype = absl::GetFlag(FLAGS_adapter_dtype);
  const std::string policy = absl::GetFlag(FLAGS_batch_policy);
  if (policy == "mixed") {
    engine_options.policy = loraserve::core::BatchPolicy::kMixed;
  } else if (policy == "single") {
    engine_options.policy = loraserve::core::BatchPolicy::kSingleAdapter;
  } else {
    Log(absl::StrCat("--batch_policy must be mixed or single, got \"", policy, "\""));
    return 1;
  }

  // Block the shutdown signals in every thread; one thread waits for them synchronously.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  loraserve::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.http.threads = absl::GetFlag(FLAGS_http_threads);
  options.http.max_queue = absl::GetFlag(FLAGS_http_max_queue);
  options.http.max_request_bytes = absl::GetFlag(FLAGS_http_max_request_bytes);
  options.http.timeout = absl::GetFlag(FLAGS_http_timeout);
  options.http.keep_alive_max_requests = absl::GetFlag(FLAGS_http_keep_alive_max_requests);
  options.http.completion_heartbeat = absl::GetFlag(FLAGS_http_completion_heartbeat);
  options.adapter_root = absl::GetFlag(FLAGS_adapter_root);
  options.adapter_load_on_miss = absl::GetFlag(FLAGS_adapter_load_on_miss);
  options.restore_register_only = absl::GetFlag(FLAGS_adapter_budget_bytes) > 0;
  options.upload_dir = absl::GetFlag(FLAGS_upload_dir);
  options.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.tenants_file = absl::GetFlag(FLAGS_tenants_file);
  options.audit_log = absl::GetFlag(FLAGS_audit_log);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  auto server = loraserve::server::Server::Start(options);
  if (!server.ok()) {
    Log(server.status().ToString());
    return 1;
  }
  Log(absl::StrCat("gRPC on port ", (*server)->port(), ", /metrics on port ",
                   (*server)->metrics_port(), "; loading ", engine_options.model_dir));

  const absl::Time load_start = absl::Now();
  auto engine = loraserve::core::Engine::Create(engine_options);
  if (!engine.ok()) {
    Log(absl::StrCat("cannot start the engine for --model=", engine_options.model_dir, ": ",
                     engine.status().ToString()));
    return 1;
  }
  std::shared_ptr<loraserve::core::Engine> shared_engine = *std::move(engine);
  (*server)->AttachEngine(shared_engine);
  Log(absl::StrCat("serving ", shared_engine->model_name(), " (loaded and warmed up in ",
                   absl::FormatDuration(absl::Trunc(absl::Now() - load_start, absl::Milliseconds(1))),
                   ")"));
  if (!WritePortFile(absl::GetFlag(FLAGS_port_file), (*server)->port()) ||
      !WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), (*server)->metrics_port())) {
    Log("cannot write --port_file / --metrics_port_file");
    return 1;
  }

  int sig = 0;
  // SIGHUP rereads --tenants_file (the server logs the outcome; a bad file keeps the old one).
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) (void)(*server)->ReloadTenants();
  Log(absl::StrCat("signal ", sig, ", draining (grace ",
                   absl::FormatDuration(absl::GetFlag(FLAGS_shutdown_grace)), ")"));
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  (*server)->Wait();
  server->reset();
  Log("stopped");
  return 0;
}
