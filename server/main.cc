// loraserve: multi-tenant LoRA serving over gRPC. Flags are defined here and only here.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "host:port for gRPC (port 0 = any free port)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "on SIGTERM/SIGINT, how long in-flight requests may run before the server stops");
ABSL_FLAG(std::string, port_file, "",
          "if set, the bound gRPC port is written to this file once the server is ready");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("loraserve --listen=HOST:PORT [flags]");
  absl::ParseCommandLine(argc, argv);

  // Block the shutdown signals in every thread; one thread waits for them synchronously.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  loraserve::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  auto server = loraserve::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "loraserve: %s\n", server.status().ToString().c_str());
    return 1;
  }
  (*server)->SetServing(true);
  std::fprintf(stderr, "loraserve: serving on port %d\n", (*server)->port());
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    if (FILE* f = std::fopen(port_file.c_str(), "w")) {
      std::fprintf(f, "%d\n", (*server)->port());
      std::fclose(f);
    }
  }

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "loraserve: signal %d, draining (grace %s)\n", sig,
               absl::FormatDuration(absl::GetFlag(FLAGS_shutdown_grace)).c_str());
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  (*server)->Wait();
  std::fprintf(stderr, "loraserve: stopped\n");
  return 0;
}
