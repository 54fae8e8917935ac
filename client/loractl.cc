// loractl: command-line client for a loraserve server. Exit code = the gRPC status code of the
// failed call (0 on success), 64 for usage errors.
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"

namespace {

constexpr int kUsageError = 64;

void PrintUsage() {
  std::fprintf(stderr,
               "usage: loractl [--addr HOST:PORT] [--timeout SECONDS] COMMAND [ARGS]\n"
               "\n"
               "commands:\n"
               "  health [SERVICE]                 grpc.health.v1 status of the server (or one service)\n"
               "  adapters list                    every adapter with its state\n"
               "  adapters get NAME\n"
               "  adapters load NAME PATH          PATH relative to the server's --adapter_root\n"
               "  adapters upload NAME DIR         send a local PEFT directory\n"
               "  adapters delete NAME\n"
               "  adapters merge NAME\n"
               "  adapters unmerge NAME\n"
               "  adapters unload-all\n"
               "  generate [--adapter NAME] [--max_new_tokens N] [--temperature T] [--seed S] TEXT\n"
               "                                   stream a continuation of TEXT to stdout\n"
               "  tokenize TEXT                    token ids of TEXT (with BOS)\n"
               "  metrics [--metrics_addr HOST:PORT] [PREFIX]\n"
               "                                   the server's /metrics (lines starting with PREFIX)\n"
               "\n"
               "flags:\n"
               "  --addr HOST:PORT   server address (default 127.0.0.1:50051, env LORASERVE_ADDR)\n"
               "  --timeout SECONDS  per-call deadline (default 30)\n");
}

int Fail(const char* what, const absl::Status& s) {
  const std::string rid = loraserve::RequestIdOf(s);
  std::fprintf(stderr, "loractl: %s: %s: %s%s\n", what, absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str(), rid.empty() ? "" : (" (request id " + rid + ")").c_str());
  return static_cast<int>(s.code());
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "loractl: %s (see loractl --help)\n", message.c_str());
  return kUsageError;
}

// Splits "--name value" / "--name=value" flags (from `allowed`) out of `args`.
bool TakeFlags(std::vector<std::string>* args, const std::vector<std::string>& allowed,
               std::map<std::string, std::string>* flags, std::string* error) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args->size(); ++i) {
    const std::string& a = (*args)[i];
    if (a.rfind("--", 0) != 0) {
      rest.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < args->size()) {
      value = (*args)[++i];
    } else {
      *error = absl::StrCat("flag --", name, " needs a value");
      return false;
    }
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
    (*flags)[name] = value;
  }
  *args = rest;
  return true;
}

void PrintAdapter(const loraserve::AdapterInfo& a) {
  std::printf("%-24s %-8s %-9s %-12s rank %-3lld %6lld bytes  %zu modules  base %s%s%s\n",
              a.name.c_str(), loraserve::AdapterStateName(a.state),
              loraserve::ResidencyName(a.residency), loraserve::AdapterSourceName(a.source),
              static_cast<long long>(a.max_rank), static_cast<long long>(a.bytes),
              a.target_modules.size(), loraserve::BaseModelMatchName(a.base_model_match),
              a.path.empty() ? "" : "  path ", a.path.c_str());
  for (const auto& w : a.warnings) std::printf("  warning: %s\n", w.c_str());
}

// GET http://host:port/path; the body of a 200 reply.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError("metrics address must be HOST:PORT");
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(address.substr(0, colon).c_str(), address.substr(colon + 1).c_str(), &hints, &res) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", address));
  }
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  const bool connected = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!connected) {
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
  ::send(fd, req.data(), req.size(), 0);
  std::string reply;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = reply.find("\r\n\r\n");
  if (body == std::string::npos || reply.find(" 200 ") > reply.find("\r\n")) {
    return absl::UnavailableError(absl::StrCat("bad reply from ", address));
  }
  return reply.substr(body + 4);
}

int Adapters(loraserve::Client& client, const std::vector<std::string>& args) {
  if (args.empty()) return Usage("adapters needs a subcommand");
  const std::string& cmd = args[0];
  auto need = [&](size_t n) { return args.size() == n + 1; };
  if (cmd == "list" && need(0)) {
    auto all = client.ListAdapters();
    if (!all.ok()) return Fail("adapters list", all.status());
    if (all->empty()) std::printf("(no adapters)\n");
    for (const auto& a : *all) PrintAdapter(a);
    return 0;
  }
  if (cmd == "get" && need(1)) {
    auto a = client.GetAdapter(args[1]);
    if (!a.ok()) return Fail("adapters get", a.status());
    PrintAdapter(*a);
    return 0;
  }
  if (cmd == "load" && need(2)) {
    auto a = client.LoadAdapter(args[1], args[2]);
    if (!a.ok()) return Fail("adapters load", a.status());
    PrintAdapter(*a);
    return 0;
  }
  if (cmd == "upload" && need(2)) {
    auto a = client.UploadAdapter(args[1], args[2]);
    if (!a.ok()) return Fail("adapters upload", a.status());
    PrintAdapter(*a);
    return 0;
  }
  if (cmd == "delete" && need(1)) {
    absl::Status s = client.DeleteAdapter(args[1]);
    if (!s.ok()) return Fail("adapters delete", s);
    std::printf("deleted %s\n", args[1].c_str());
    return 0;
  }
  if (cmd == "merge" && need(1)) {
    auto m = client.MergeAdapter(args[1]);
    if (!m.ok()) return Fail("adapters merge", m.status());
    std::printf("%s %s\n", args[1].c_str(), m->already_merged ? "was already merged" : "merged");
    return 0;
  }
  if (cmd == "unmerge" && need(1)) {
    auto a = client.UnmergeAdapter(args[1]);
    if (!a.ok()) return Fail("adapters unmerge", a.status());
    std::printf("%s unmerged\n", args[1].c_str());
    return 0;
  }
  if (cmd == "unload-all" && need(0)) {
    auto n = client.UnloadAll();
    if (!n.ok()) return Fail("adapters unload-all", n.status());
    std::printf("deleted %d adapters\n", *n);
    return 0;
  }
  return Usage(absl::StrCat("bad arguments for adapters ", cmd));
}

int Generate(loraserve::Client& client, std::vector<std::string> args) {
  std::map<std::string, std::string> flags;
  std::string error;
  if (!TakeFlags(&args, {"adapter", "max_new_tokens", "temperature", "seed"}, &flags, &error)) {
    return Usage(error);
  }
  if (args.size() != 1) return Usage("generate needs exactly one TEXT argument");
  loraserve::GenerateRequest req;
  req.text = args[0];
  req.adapter = flags["adapter"];
  if (flags.count("max_new_tokens") && !absl::SimpleAtoi(flags["max_new_tokens"], &req.sampling.max_new_tokens)) {
    return Usage("--max_new_tokens wants an integer");
  }
  if (flags.count("temperature")) {
    double t;
    if (!absl::SimpleAtod(flags["temperature"], &t)) return Usage("--temperature wants a number");
    req.sampling.temperature = t;
  }
  if (flags.count("seed")) {
    uint64_t seed;
    if (!absl::SimpleAtoi(flags["seed"], &seed)) return Usage("--seed wants a non-negative integer");
    req.sampling.seed = seed;
  }
  std::printf("%s", req.text.c_str());
  auto r = client.Generate(req, [](const loraserve::GeneratedToken& t) {
    std::fputs(t.text.c_str(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  std::fflush(stdout);
  if (!r.ok()) return Fail("generate", r.status());
  std::fprintf(stderr, "[%lld prompt + %lld new tokens, finish: %s, seed %llu, first token after %.1f ms]\n",
               static_cast<long long>(r->prompt_tokens), static_cast<long long>(r->completion_tokens),
               loraserve::FinishReasonName(r->finish_reason), static_cast<unsigned long long>(r->seed),
               r->time_to_first_token_ms);
  return 0;
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
    } else if (args.empty() && a == "--addr" && i + 1 < argc) {
      options.address = argv[++i];
    } else if (args.empty() && a.rfind("--addr=", 0) == 0) {
      options.address = a.substr(7);
    } else if (args.empty() && (a == "--timeout" || a.rfind("--timeout=", 0) == 0)) {
      const std::string v = a == "--timeout" ? (i + 1 < argc ? argv[++i] : "") : a.substr(10);
      double seconds;
      if (!absl::SimpleAtod(v, &seconds) || seconds <= 0) return Usage("--timeout wants seconds > 0");
      options.default_deadline = absl::Seconds(seconds);
    } else if (args.empty() && a.rfind("--", 0) == 0) {
      return Usage(absl::StrCat("unknown flag ", a));
    } else {
      args.push_back(a);  // the command and its own arguments / flags
    }
  }
  if (args.empty()) {
    PrintUsage();
    return kUsageError;
  }
  auto client_or = loraserve::Client::Create(options);
  if (!client_or.ok()) {
    std::fprintf(stderr, "loractl: %s\n", client_or.status().ToString().c_str());
    return kUsageError;
  }
  loraserve::Client& client = **client_or;
  const std::string cmd = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "health") {
    auto status = client.Health(rest.empty() ? "" : rest[0]);
    if (!status.ok()) return Fail("health", status.status());
    std::printf("%s\n", loraserve::ServingStatusName(*status));
    return *status == loraserve::ServingStatus::kServing ? 0 : 14;  // 14 = UNAVAILABLE
  }
  if (cmd == "adapters") return Adapters(client, rest);
  if (cmd == "generate") return Generate(client, rest);
  if (cmd == "tokenize") {
    if (rest.size() != 1) return Usage("tokenize needs exactly one TEXT argument");
    auto ids = client.Tokenize(rest[0], /*add_special_tokens=*/true);
    if (!ids.ok()) return Fail("tokenize", ids.status());
    std::printf("%s\n", absl::StrJoin(*ids, " ").c_str());
    return 0;
  }
  if (cmd == "metrics") {
    std::vector<std::string> margs = rest;
    std::map<std::string, std::string> flags;
    std::string error;
    if (!TakeFlags(&margs, {"metrics_addr"}, &flags, &error)) return Usage(error);
    if (margs.size() > 1) return Usage("metrics takes at most one PREFIX");
    const std::string addr = flags.count("metrics_addr") ? flags["metrics_addr"] : "127.0.0.1:9464";
    auto text = HttpGet(addr, "/metrics");
    if (!text.ok()) return Fail("metrics", text.status());
    const std::string prefix = margs.empty() ? "" : margs[0];
    size_t start = 0;
    while (start < text->size()) {
      size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      const std::string line = text->substr(start, end - start);
      if (prefix.empty() || line.rfind(prefix, 0) == 0) std::printf("%s\n", line.c_str());
      start = end + 1;
    }
    return 0;
  }
  std::fprintf(stderr, "loractl: unknown command \"%s\"\n", cmd.c_str());
  PrintUsage();
  return kUsageError;
}
