// loractl: command-line client for a loraserve server. Exit code = the gRPC status code of the
// failed call (0 on success), 64 for usage errors.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/client.h"

namespace {

constexpr int kUsageError = 64;

void PrintUsage() {
  std::fprintf(stderr,
               "usage: loractl [--addr HOST:PORT] COMMAND\n"
               "\n"
               "commands:\n"
               "  health [SERVICE]   grpc.health.v1 status of the server (or one service)\n"
               "\n"
               "flags:\n"
               "  --addr HOST:PORT   server address (default 127.0.0.1:50051, env LORASERVE_ADDR)\n");
}

}  // namespace

int main(int argc, char** argv) {
  loraserve::ClientOptions options;
  if (const char* env = std::getenv("LORASERVE_ADDR")) options.address = env;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      PrintUsage();
      return 0;
    } else if (a == "--addr" && i + 1 < argc) {
      options.address = argv[++i];
    } else if (a.rfind("--addr=", 0) == 0) {
      options.address = a.substr(7);
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "loractl: unknown flag %s\n", a.c_str());
      return kUsageError;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty()) {
    PrintUsage();
    return kUsageError;
  }
  auto client = loraserve::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "loractl: %s\n", client.status().ToString().c_str());
    return kUsageError;
  }
  if (args[0] == "health") {
    auto status = (*client)->Health(args.size() > 1 ? args[1] : "");
    if (!status.ok()) {
      std::fprintf(stderr, "loractl: health: %s\n", status.status().ToString().c_str());
      return static_cast<int>(status.status().code());
    }
    std::printf("%s\n", loraserve::ServingStatusName(*status));
    return *status == loraserve::ServingStatus::kServing ? 0 : 14;  // 14 = UNAVAILABLE
  }
  std::fprintf(stderr, "loractl: unknown command \"%s\"\n", args[0].c_str());
  PrintUsage();
  return kUsageError;
}
