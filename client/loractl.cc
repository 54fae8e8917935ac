// loractl: the operator command line for a loraserve server, over the C++ client library.
//
//   loractl [GLOBAL FLAGS] COMMAND [ARGS] [FLAGS]      (loractl --help, loractl COMMAND --help)
//
// One function per subcommand (Run*), described by the command table (Commands()); a small flag
// parser shared by all of them (ParseFlags). Global flags may come before or after the command.
// Output: human-readable on stdout (progress bars and summaries on stderr), or with --json exactly
// one JSON document on stdout and errors as one JSON document on stderr.
// Exit code: 0 on success, the gRPC status code of the failed call otherwise (health NOT_SERVING:
// 14), 64 for usage errors (bad command line, unreadable --token_file / TLS files).
#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/loractl/output.h"
#include "nlohmann/json.hpp"

namespace {

using loraserve::loractl::FormatBytes;
using loraserve::loractl::FormatFloat;
using loraserve::loractl::PrintFields;
using loraserve::loractl::PrintTable;
using loraserve::loractl::ProgressBar;
using loraserve::loractl::Quote;
using Json = nlohmann::ordered_json;  // keys in the order written

constexpr int kUsageError = 64;   // sysexits.h EX_USAGE
constexpr int kUnavailable = 14;  // grpc UNAVAILABLE: health not SERVING
constexpr size_t kUnlimited = static_cast<size_t>(-1);
constexpr const char* kDefaultAddress = "127.0.0.1:50051";
constexpr const char* kDefaultMetricsAddress = "127.0.0.1:9464";
constexpr size_t kMaxTokenTexts = 65536;  // distinct ids detokenized for logprob tables

// ---- Flag parsing -----------------------------------------------------------------------------

enum class FlagKind {
  kBool,   // --name (or --name=true|false)
  kValue,  // --name VALUE / --name=VALUE; the last one wins
  kList,   // like kValue, repeatable; every value kept
};

struct FlagSpec {
  std::string name;
  FlagKind kind;
  std::string metavar;  // kValue / kList: what the value is, for --help
  std::string help;
};

// A parsed command line: flag values by name and positional arguments in order.
class Args {
 public:
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value of a flag, or `fallback` when it was not given.
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }
  std::vector<std::string> All(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  // Bool flags: given and not "false" (ParseFlags accepts only true/false values for them).
  bool Bool(const std::string& name) const { return Has(name) && Get(name) != "false"; }
  void Add(const std::string& name, const std::string& value) { values_[name].push_back(value); }

  std::vector<std::string> positional;
  bool help = false;  // -h / --help seen

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

bool LooksLikeNumber(const std::string& s) {
  double unused;
  return absl::SimpleAtod(s, &unused);
}

// Parses argv[*pos...] against the union of `specs` into `out`. With `stop_at_positional` it stops
// at the first positional argument (global flags before the command) and leaves *pos there;
// otherwise it consumes everything, and "--" makes every later argument positional.
// InvalidArgument with a message for the user on an unknown flag or a missing/bad value.
absl::Status ParseFlags(const std::vector<std::string>& argv, size_t* pos,
                        const std::vector<const std::vector<FlagSpec>*>& specs,
                        bool stop_at_positional, Args* out) {
  auto find = [&](const std::string& name) -> const FlagSpec* {
    for (const auto* list : specs) {
      for (const auto& spec : *list) {
        if (spec.name == name) return &spec;
      }
    }
    return nullptr;
  };
  bool flags_done = false;
  while (*pos < argv.size()) {
    const std::string& arg = argv[*pos];
    const bool is_flag = !flags_done && arg.size() > 1 && arg[0] == '-' && !LooksLikeNumber(arg);
    if (!is_flag) {
      if (stop_at_positional) return absl::OkStatus();
      out->positional.push_back(arg);
      ++*pos;
      continue;
    }
    ++*pos;
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      out->help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = find(name);
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (spec->kind == FlagKind::kBool) {
      if (value.has_value() && *value != "true" && *value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " takes no value (or =true / =false)"));
      }
      out->Add(name, value.value_or("true"));
      continue;
    }
    if (!value.has_value()) {
      if (*pos >= argv.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " needs a value (", spec->metavar, ")"));
      }
      value = argv[(*pos)++];
    }
    out->Add(name, *value);
  }
  return absl::OkStatus();
}

// Typed access to flag values; remembers the first conversion error for a usage message.
class FlagValues {
 public:
  explicit FlagValues(const Args& args) : args_(args) {}

  template <typename T>
  void Int(const std::string& name, T* out, int64_t min, int64_t max) {
    if (!args_.Has(name)) return;
    int64_t v;
    if (!absl::SimpleAtoi(args_.Get(name), &v) || v < min || v > max) {
      Error(absl::StrCat("--", name, " wants an integer in [", min, ", ", max, "], got \"",
                         args_.Get(name), "\""));
      return;
    }
    *out = static_cast<T>(v);
  }
  void Uint64(const std::string& name, std::optional<uint64_t>* out) {
    if (!args_.Has(name)) return;
    uint64_t v;
    if (!absl::SimpleAtoi(args_.Get(name), &v)) {
      Error(
          absl::StrCat("--", name, " wants a non-negative integer, got \"", args_.Get(name), "\""));
      return;
    }
    *out = v;
  }
  void Double(const std::string& name, std::optional<double>* out) {
    if (!args_.Has(name)) return;
    double v;
    if (!absl::SimpleAtod(args_.Get(name), &v) || !std::isfinite(v)) {
      Error(absl::StrCat("--", name, " wants a number, got \"", args_.Get(name), "\""));
      return;
    }
    *out = v;
  }
  void Double(const std::string& name, double* out) {
    std::optional<double> v;
    Double(name, &v);
    if (v.has_value()) *out = *v;
  }
  void Error(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  const Args& args_;
  std::string error_;
};

// Token ids from arguments like "1,2,3", "1 2 3" or several such arguments.
absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::vector<std::string>& parts) {
  std::vector<int32_t> ids;
  for (const auto& part : parts) {
    for (absl::string_view piece :
         absl::StrSplit(part, absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(piece, &id) || id < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad token id \"", piece, "\""));
      }
      ids.push_back(id);
    }
  }
  if (ids.empty()) return absl::InvalidArgumentError("no token ids given");
  return ids;
}

// "30", "0.5" (seconds) or an absl duration ("500ms", "2m").
bool ParseTimeout(const std::string& text, absl::Duration* out) {
  double seconds;
  if (absl::SimpleAtod(text, &seconds)) {
    *out = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, out)) {
    return false;
  }
  return *out > absl::ZeroDuration() && *out < absl::InfiniteDuration();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ---- JSON documents ---------------------------------------------------------------------------

Json AdapterJson(const loraserve::AdapterInfo& a) {
  Json j;
  j["name"] = a.name;
  j["state"] = loraserve::AdapterStateName(a.state);
  j["residency"] = loraserve::ResidencyName(a.residency);
  j["source"] = loraserve::AdapterSourceName(a.source);
  j["path"] = a.path;
  j["checksum"] = a.checksum;
  j["bytes"] = a.bytes;
  j["max_rank"] = a.max_rank;
  j["ranks"] = a.ranks;
  j["target_modules"] = a.target_modules;
  j["dora"] = a.dora;
  j["has_head"] = a.has_head;
  j["base_model_name_or_path"] = a.base_model_name_or_path;
  j["base_model_match"] = loraserve::BaseModelMatchName(a.base_model_match);
  j["warnings"] = a.warnings;
  j["uses"] = a.uses;
  return j;
}

Json FilesJson(const std::string& dir, const std::vector<loraserve::TransferredFile>& files) {
  Json list = Json::array();
  int64_t total = 0;
  for (const auto& f : files) {
    list.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
    total += f.size;
  }
  return {{"dir", dir}, {"files", list}, {"total_bytes", total}};
}

Json TopJson(const std::vector<loraserve::TokenLogprob>& top,
             const std::map<int32_t, std::string>& texts) {
  Json list = Json::array();
  for (const auto& t : top) {
    Json e = {{"id", t.id}, {"logprob", t.logprob}};
    if (auto it = texts.find(t.id); it != texts.end()) e["text"] = it->second;
    list.push_back(std::move(e));
  }
  return list;
}

// ---- Context shared by the subcommands --------------------------------------------------------

struct Command;

// What every subcommand needs: the output mode, the client, per-call options, error reporting.
class Context {
 public:
  // `json`: --json was seen on the command line (even if parsing stopped before it).
  Context(const Command& command, const Args& args, bool json);

  // Turns the global flags into a client (commands that talk gRPC). Usage error code on failure.
  int Connect();

  loraserve::Client& client() { return *client_; }
  loraserve::CallOptions call() const { return call_; }
  const Args& args() const { return args_; }
  bool json() const { return json_; }
  bool quiet() const { return quiet_; }

  // Prints a failed call (human or JSON on stderr) and returns its exit code.
  int Fail(const absl::Status& status) const;
  // Prints a usage error and returns 64.
  int Usage(const std::string& message) const;
  // Writes the one JSON document of a --json run.
  void Emit(const Json& doc) const {
    std::printf("%s\n", doc.dump(2, ' ', false, Json::error_handler_t::replace).c_str());
  }
  // A progress bar for a transfer when progress is shown, else nullptr.
  std::unique_ptr<ProgressBar> Progress(const std::string& label) const;
  static loraserve::ProgressCallback Callback(ProgressBar* bar) {
    if (bar == nullptr) return nullptr;
    return [bar](const loraserve::TransferProgress& p) { bar->Update(p); };
  }

  // The text of each distinct id in `ids` (one Detokenize call; empty when there are too many or
  // the server fails).
  std::map<int32_t, std::string> TokenTexts(const std::set<int32_t>& ids);

 private:
  const Command& command_;
  const Args& args_;
  const bool json_;
  const bool quiet_;
  std::unique_ptr<loraserve::Client> client_;
  loraserve::CallOptions call_;
};

// Reports a usage error before a Context exists (no command yet).
int UsageBeforeCommand(bool json, const std::string& message) {
  if (json) {
    Json doc = {{"error", {{"code", "USAGE"}, {"code_number", kUsageError}, {"message", message}}}};
    std::fprintf(stderr, "%s\n", doc.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
  } else {
    std::fprintf(stderr, "loractl: %s (see loractl --help)\n", message.c_str());
  }
  return kUsageError;
}

// ---- The command table ------------------------------------------------------------------------

// One subcommand: its usage, its own flags and the function that runs it.
struct Command {
  std::string name;      // "health", "adapters load", ...
  std::string synopsis;  // positional arguments, e.g. "NAME PATH"
  size_t min_args = 0;   // positional arguments accepted
  size_t max_args = 0;   // kUnlimited = any number
  int (*run)(Context& ctx) = nullptr;
  std::string summary;  // one line for the command list
  std::string details;  // more for `COMMAND --help` ("" = none)
  std::vector<FlagSpec> flags;
  bool needs_client = true;  // false: no gRPC (metrics is plain HTTP)
};

const std::vector<FlagSpec>& GlobalFlags() {
  static const auto* flags = new std::vector<FlagSpec>{
      {"addr", FlagKind::kValue, "HOST:PORT",
       "server address (env LORASERVE_ADDR; default 127.0.0.1:50051)"},
      {"timeout", FlagKind::kValue, "DURATION",
       "deadline of each call, retries included: seconds or 500ms, 2m (default 30)"},
      {"retries", FlagKind::kValue, "N",
       "retry idempotent calls N times on UNAVAILABLE / a full queue (default 3)"},
      {"request_id", FlagKind::kValue, "ID",
       "send x-request-id ID (default: the server makes one)"},
      {"token", FlagKind::kValue, "TOKEN", "bearer token (env LORASERVE_TOKEN)"},
      {"token_file", FlagKind::kValue, "FILE", "read the bearer token from FILE (first line)"},
      {"tls", FlagKind::kBool, "", "connect with TLS (the system's roots unless --tls_ca_file)"},
      {"tls_ca_file", FlagKind::kValue, "FILE",
       "PEM root certificate(s) to verify the server with"},
      {"tls_cert_file", FlagKind::kValue, "FILE",
       "PEM client certificate chain for mutual TLS (with --tls_key_file)"},
      {"tls_key_file", FlagKind::kValue, "FILE", "PEM client private key for mutual TLS"},
      {"tls_server_name", FlagKind::kValue, "NAME",
       "name expected in the server's certificate (default: the host of --addr)"},
      {"json", FlagKind::kBool, "",
       "one JSON document on stdout; errors as {\"error\": {...}} on stderr"},
      {"quiet", FlagKind::kBool, "", "nothing on stderr but errors (no progress, no summaries)"},
      {"progress", FlagKind::kBool, "",
       "transfer progress bars even when stderr is no terminal (or with --json)"},
  };
  return *flags;
}

const std::vector<Command>& Commands();

void PrintFlagList(std::FILE* out, const std::vector<FlagSpec>& flags) {
  std::vector<std::pair<std::string, std::string>> rows;
  size_t width = 0;
  for (const auto& f : flags) {
    std::string left = "--" + f.name;
    if (f.kind != FlagKind::kBool) left += " " + f.metavar;
    if (f.kind == FlagKind::kList) left += " (repeatable)";
    width = std::max(width, left.size());
    rows.emplace_back(left, f.help);
  }
  // Help texts with several lines continue under their first line.
  const std::string indent = "\n" + std::string(width + 4, ' ');
  for (const auto& [left, help] : rows) {
    std::fprintf(out, "  %-*s  %s\n", static_cast<int>(width), left.c_str(),
                 absl::StrReplaceAll(help, {{"\n", indent}}).c_str());
  }
}

void PrintMainHelp(std::FILE* out) {
  std::fprintf(out,
               "loractl: the operator command line for a loraserve server.\n\n"
               "usage: loractl [GLOBAL FLAGS] COMMAND [ARGS] [FLAGS]\n"
               "       loractl COMMAND --help      usage and flags of one command\n\n"
               "commands:\n");
  size_t width = 0;
  for (const auto& c : Commands()) width = std::max(width, c.name.size() + 1 + c.synopsis.size());
  for (const auto& c : Commands()) {
    const std::string left = c.synopsis.empty() ? c.name : c.name + " " + c.synopsis;
    std::fprintf(out, "  %-*s  %s\n", static_cast<int>(width), left.c_str(), c.summary.c_str());
  }
  std::fprintf(out, "\nglobal flags (before or after the command):\n");
  PrintFlagList(out, GlobalFlags());
  std::fprintf(
      out,
      "\nAny --tls_* file flag turns on --tls. Exit status: 0 on success, else the gRPC status\n"
      "code of the failed call (3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS,\n"
      "9 FAILED_PRECONDITION, 14 UNAVAILABLE (also: health not SERVING), 16 UNAUTHENTICATED,\n"
      "...), 64 for a usage error.\n");
}

void PrintCommandHelp(std::FILE* out, const Command& c) {
  std::fprintf(out, "usage: loractl [GLOBAL FLAGS] %s%s%s%s\n\n%s\n", c.name.c_str(),
               c.flags.empty() ? "" : " [FLAGS]", c.synopsis.empty() ? "" : " ", c.synopsis.c_str(),
               c.summary.c_str());
  if (!c.details.empty()) std::fprintf(out, "\n%s\n", c.details.c_str());
  if (!c.flags.empty()) {
    std::fprintf(out, "\nflags:\n");
    PrintFlagList(out, c.flags);
  }
  std::fprintf(
      out,
      "\nglobal flags: --addr --timeout --retries --request_id --token --token_file --tls\n"
      "  --tls_ca_file --tls_cert_file --tls_key_file --tls_server_name --json --quiet\n"
      "  --progress (see loractl --help)\n");
}

void PrintGroupHelp(std::FILE* out, const std::string& group) {
  std::fprintf(out, "usage: loractl [GLOBAL FLAGS] %s SUBCOMMAND [ARGS] [FLAGS]\n\nsubcommands:\n",
               group.c_str());
  for (const auto& c : Commands()) {
    if (c.name.rfind(group + " ", 0) != 0) continue;
    const std::string left = c.synopsis.empty() ? c.name : c.name + " " + c.synopsis;
    std::fprintf(out, "  %-40s  %s\n", left.c_str(), c.summary.c_str());
  }
  std::fprintf(out, "\n`loractl %s SUBCOMMAND --help` shows one subcommand's flags.\n",
               group.c_str());
}

// ---- Context implementation -------------------------------------------------------------------

Context::Context(const Command& command, const Args& args, bool json)
    : command_(command),
      args_(args),
      json_(json || args.Bool("json")),
      quiet_(args.Bool("quiet")) {}

int Context::Connect() {
  loraserve::ClientOptions options;
  const char* env_addr = std::getenv("LORASERVE_ADDR");
  options.address =
      args_.Get("addr", env_addr != nullptr && *env_addr ? env_addr : kDefaultAddress);
  if (args_.Has("timeout") && !ParseTimeout(args_.Get("timeout"), &options.default_deadline)) {
    return Usage(
        absl::StrCat("--timeout wants a positive duration (seconds, or e.g. 500ms), got \"",
                     args_.Get("timeout"), "\""));
  }
  FlagValues values(args_);
  int retries = options.retry.max_attempts - 1;
  values.Int("retries", &retries, 0, 100);
  if (!values.ok()) return Usage(values.error());
  options.retry.max_attempts = retries + 1;

  if (args_.Has("token") && args_.Has("token_file"))
    return Usage("give --token or --token_file, not both");
  if (args_.Has("token")) {
    options.bearer_token = args_.Get("token");
  } else if (args_.Has("token_file")) {
    absl::StatusOr<std::string> text = ReadFile(args_.Get("token_file"));
    if (!text.ok()) return Usage(absl::StrCat("--token_file: ", text.status().message()));
    const std::string first_line = text->substr(0, text->find('\n'));
    options.bearer_token = std::string(absl::StripAsciiWhitespace(first_line));
    if (options.bearer_token.empty()) return Usage("--token_file: the file holds no token");
  } else if (const char* env = std::getenv("LORASERVE_TOKEN"); env != nullptr) {
    options.bearer_token = std::string(absl::StripAsciiWhitespace(env));
  }

  loraserve::TlsOptions& tls = options.tls;
  tls.enabled = args_.Bool("tls");
  const std::pair<const char*, std::string*> files[] = {{"tls_ca_file", &tls.root_certs_pem},
                                                        {"tls_cert_file", &tls.client_cert_pem},
                                                        {"tls_key_file", &tls.client_key_pem}};
  for (const auto& [flag, pem] : files) {
    if (!args_.Has(flag)) continue;
    absl::StatusOr<std::string> text = ReadFile(args_.Get(flag));
    if (!text.ok()) return Usage(absl::StrCat("--", flag, ": ", text.status().message()));
    *pem = *std::move(text);
    tls.enabled = true;
  }
  if (args_.Has("tls_cert_file") != args_.Has("tls_key_file")) {
    return Usage("--tls_cert_file and --tls_key_file go together");
  }
  if (args_.Has("tls_server_name")) {
    tls.server_name_override = args_.Get("tls_server_name");
    tls.enabled = true;
  }

  absl::StatusOr<std::unique_ptr<loraserve::Client>> client = loraserve::Client::Create(options);
  if (!client.ok()) return Usage(std::string(client.status().message()));
  client_ = *std::move(client);
  call_.request_id = args_.Get("request_id");
  return 0;
}

int Context::Fail(const absl::Status& status) const {
  const std::string rid = loraserve::RequestIdOf(status);
  if (json_) {
    Json error = {{"code", absl::StatusCodeToString(status.code())},
                  {"code_number", static_cast<int>(status.code())},
                  {"message", std::string(status.message())},
                  {"request_id", rid.empty() ? Json(nullptr) : Json(rid)}};
    std::fprintf(
        stderr, "%s\n",
        Json{{"error", error}}.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
  } else {
    std::fprintf(stderr, "loractl: %s: %s: %s%s\n", command_.name.c_str(),
                 absl::StatusCodeToString(status.code()).c_str(),
                 std::string(status.message()).c_str(),
                 rid.empty() ? "" : absl::StrCat(" (request id ", rid, ")").c_str());
  }
  const int code = static_cast<int>(status.code());
  return code == 0 ? 2 : code;  // never report success for a failure
}

int Context::Usage(const std::string& message) const {
  if (json_) return UsageBeforeCommand(true, message);
  std::fprintf(stderr, "loractl: %s: %s (see loractl %s --help)\n", command_.name.c_str(),
               message.c_str(), command_.name.c_str());
  return kUsageError;
}

std::unique_ptr<ProgressBar> Context::Progress(const std::string& label) const {
  const bool tty = isatty(STDERR_FILENO) != 0;
  const bool show = !quiet_ && (args_.Bool("progress") || (!json_ && tty));
  return show ? std::make_unique<ProgressBar>(label, tty) : nullptr;
}

std::map<int32_t, std::string> Context::TokenTexts(const std::set<int32_t>& ids) {
  std::map<int32_t, std::string> texts;
  if (ids.empty() || ids.size() > kMaxTokenTexts) return texts;
  const std::vector<int32_t> list(ids.begin(), ids.end());
  absl::StatusOr<std::vector<std::string>> got = client_->TokenTexts(list, call_);
  if (!got.ok()) return texts;
  for (size_t i = 0; i < list.size(); ++i) texts[list[i]] = (*got)[i];
  return texts;
}

std::string TextOf(const std::map<int32_t, std::string>& texts, int32_t id) {
  auto it = texts.find(id);
  return it == texts.end() ? "" : Quote(it->second);
}

// ---- adapters ---------------------------------------------------------------------------------

// "8: self_attn.q_proj, self_attn.v_proj in layers 0-3": module names with the "...layers.N."
// prefix folded (the full list is in --json).
std::string ModulesSummary(const std::vector<std::string>& modules) {
  std::vector<std::string> kinds;
  std::set<int> layers;
  for (const auto& m : modules) {
    std::string kind = m;
    const size_t at = m.find("layers.");
    if (at != std::string::npos && (at == 0 || m[at - 1] == '.')) {
      const size_t digits = at + 7;
      const size_t dot = m.find('.', digits);
      int layer;
      if (dot != std::string::npos && absl::SimpleAtoi(m.substr(digits, dot - digits), &layer)) {
        layers.insert(layer);
        kind = m.substr(dot + 1);
      }
    }
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  }
  std::string out = absl::StrCat(modules.size());
  if (!kinds.empty()) absl::StrAppend(&out, ": ", absl::StrJoin(kinds, ", "));
  if (!layers.empty()) {
    const bool contiguous =
        *layers.rbegin() - *layers.begin() + 1 == static_cast<int>(layers.size());
    absl::StrAppend(&out, " in layer", layers.size() == 1 ? " " : "s ",
                    contiguous && layers.size() > 1
                        ? absl::StrCat(*layers.begin(), "-", *layers.rbegin())
                        : absl::StrJoin(layers, ","));
  }
  return out;
}

void PrintAdapterFields(const loraserve::AdapterInfo& a) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"name", a.name},
      {"state", loraserve::AdapterStateName(a.state)},
      {"residency", loraserve::ResidencyName(a.residency)},
      {"source", loraserve::AdapterSourceName(a.source)},
  };
  if (!a.path.empty()) f.emplace_back("path", a.path);
  f.emplace_back("checksum", a.checksum.empty() ? "-" : a.checksum);
  f.emplace_back("bytes", absl::StrCat(a.bytes, " (", FormatBytes(a.bytes), ")"));
  f.emplace_back("max_rank", absl::StrCat(a.max_rank));
  // Ranks per module, shown once per distinct value ("4 x 8, 8 x 2").
  std::map<int64_t, int> rank_counts;
  for (int64_t r : a.ranks) ++rank_counts[r];
  std::vector<std::string> ranks;
  for (const auto& [rank, count] : rank_counts) ranks.push_back(absl::StrCat(rank, " x ", count));
  f.emplace_back("ranks", ranks.empty() ? "-" : absl::StrJoin(ranks, ", "));
  f.emplace_back("target_modules", ModulesSummary(a.target_modules));
  f.emplace_back("dora", a.dora ? "yes" : "no");
  f.emplace_back("head", a.has_head ? "yes" : "no");
  f.emplace_back("base_model",
                 absl::StrCat(a.base_model_name_or_path.empty() ? "-" : a.base_model_name_or_path,
                              " (", loraserve::BaseModelMatchName(a.base_model_match), ")"));
  f.emplace_back("uses", absl::StrCat(a.uses));
  for (const auto& w : a.warnings) f.emplace_back("warning", w);
  PrintFields(f);
}

// One line about an adapter: "ready, resident, rank 8, 28.0 KiB, 8 modules, checksum dd8995ef263e".
std::string AdapterSummary(const loraserve::AdapterInfo& a) {
  std::string out = absl::StrCat(loraserve::AdapterStateName(a.state), ", ",
                                 loraserve::ResidencyName(a.residency), ", rank ", a.max_rank, ", ",
                                 FormatBytes(a.bytes), ", ", a.target_modules.size(), " modules");
  if (!a.checksum.empty()) absl::StrAppend(&out, ", checksum ", a.checksum.substr(0, 12));
  return out;
}

// The result of a command that returns one adapter: with --json {"adapter": {...}} plus `extra`;
// otherwise `headline` and the adapter's summary on one line, or (no headline) its fields.
int ReportAdapter(Context& ctx, const loraserve::AdapterInfo& a, const std::string& headline,
                  Json extra = Json::object()) {
  if (ctx.json()) {
    extra["adapter"] = AdapterJson(a);
    ctx.Emit(extra);
  } else if (!headline.empty()) {
    std::printf("%s: %s\n", headline.c_str(), AdapterSummary(a).c_str());
  } else {
    PrintAdapterFields(a);
  }
  return 0;
}

int RunAdaptersList(Context& ctx) {
  auto all = ctx.client().ListAdapters(ctx.call());
  if (!all.ok()) return ctx.Fail(all.status());
  if (ctx.json()) {
    Json list = Json::array();
    for (const auto& a : *all) list.push_back(AdapterJson(a));
    ctx.Emit({{"adapters", list}});
    return 0;
  }
  if (all->empty()) {
    std::printf("no adapters\n");
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "RESIDENCY", "SOURCE", "RANK", "BYTES", "MODULES", "CHECKSUM"}};
  for (const auto& a : *all) {
    rows.push_back({a.name, loraserve::AdapterStateName(a.state),
                    loraserve::ResidencyName(a.residency), loraserve::AdapterSourceName(a.source),
                    absl::StrCat(a.max_rank), FormatBytes(a.bytes),
                    absl::StrCat(a.target_modules.size()),
                    a.checksum.empty() ? "-" : a.checksum.substr(0, 12)});
  }
  PrintTable(rows, {4, 5, 6});
  return 0;
}

int RunAdaptersGet(Context& ctx) {
  auto a = ctx.client().GetAdapter(ctx.args().positional[0], ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a, "");
}

int RunAdaptersLoad(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  auto a = ctx.client().LoadAdapter(name, ctx.args().positional[1], ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a,
                       a->already_loaded ? absl::StrCat(name, " was already loaded (same checksum)")
                                         : absl::StrCat("loaded ", name),
                       {{"already_loaded", a->already_loaded}});
}

int RunAdaptersUpload(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  std::unique_ptr<ProgressBar> bar = ctx.Progress("upload " + name);
  auto a = ctx.client().UploadAdapter(name, ctx.args().positional[1], ctx.call(),
                                      Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a,
                       a->already_loaded ? absl::StrCat(name, " was already loaded (same checksum)")
                                         : absl::StrCat("uploaded ", name),
                       {{"already_loaded", a->already_loaded}});
}

int RunAdaptersDelete(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  absl::Status s = ctx.client().DeleteAdapter(name, ctx.call());
  if (!s.ok()) return ctx.Fail(s);
  if (ctx.json()) {
    ctx.Emit({{"deleted", name}});
  } else {
    std::printf("deleted %s\n", name.c_str());
  }
  return 0;
}

int RunAdaptersMerge(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  auto m = ctx.client().MergeAdapter(name, ctx.call());
  if (!m.ok()) return ctx.Fail(m.status());
  if (ctx.json())
    return ReportAdapter(ctx, m->adapter, "", {{"already_merged", m->already_merged}});
  std::printf("%s %s\n", name.c_str(), m->already_merged ? "was already merged" : "merged");
  return 0;
}

int RunAdaptersUnmerge(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  auto a = ctx.client().UnmergeAdapter(name, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  if (ctx.json()) return ReportAdapter(ctx, *a, "");
  std::printf("%s unmerged\n", name.c_str());
  return 0;
}

int RunAdaptersUnloadAll(Context& ctx) {
  auto n = ctx.client().UnloadAll(ctx.call());
  if (!n.ok()) return ctx.Fail(n.status());
  if (ctx.json()) {
    ctx.Emit({{"deleted", *n}});
  } else {
    std::printf("deleted %d adapter%s\n", *n, *n == 1 ? "" : "s");
  }
  return 0;
}

int RunAdaptersCombine(Context& ctx) {
  const Args& args = ctx.args();
  loraserve::CombineRequest req;
  req.name = args.positional[0];
  FlagValues values(args);
  for (size_t i = 1; i < args.positional.size(); ++i) {
    // NAME or NAME:WEIGHT (adapter names never contain ':').
    const std::string& source = args.positional[i];
    loraserve::WeightedAdapter w;
    const size_t colon = source.rfind(':');
    w.name = source.substr(0, colon);
    if (colon != std::string::npos &&
        (!absl::SimpleAtod(source.substr(colon + 1), &w.weight) || !std::isfinite(w.weight))) {
      return ctx.Usage(absl::StrCat("source \"", source, "\" is not NAME:WEIGHT"));
    }
    req.sources.push_back(std::move(w));
  }
  req.combination_type = args.Get("type", req.combination_type);
  values.Int("svd_rank", &req.svd_rank, 0, std::numeric_limits<int32_t>::max());
  values.Double("svd_clamp", &req.svd_clamp);
  values.Double("density", &req.density);
  req.majority_sign_method = args.Get("majority_sign_method", req.majority_sign_method);
  std::optional<uint64_t> seed;
  values.Uint64("seed", &seed);
  req.seed = seed.value_or(0);
  if (!values.ok()) return ctx.Usage(values.error());
  auto a = ctx.client().CombineAdapters(req, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a,
                       absl::StrCat("combined ", req.sources.size(), " adapters into ", req.name,
                                    " (", req.combination_type, ")"));
}

// The result of save / export: the files written.
int ReportFiles(Context& ctx, const std::string& headline, const std::string& dir,
                const std::vector<loraserve::TransferredFile>& files, Json extra) {
  if (ctx.json()) {
    Json doc = FilesJson(dir, files);
    doc.update(extra);
    ctx.Emit(doc);
    return 0;
  }
  int64_t total = 0;
  for (const auto& f : files) total += f.size;
  std::printf("%s: %zu files, %s\n", headline.c_str(), files.size(), FormatBytes(total).c_str());
  std::vector<std::vector<std::string>> rows = {{"FILE", "BYTES", "SHA256"}};
  for (const auto& f : files) rows.push_back({f.path, absl::StrCat(f.size), f.sha256});
  PrintTable(rows, {1});
  return 0;
}

int RunAdaptersSave(Context& ctx) {
  const std::string& name = ctx.args().positional[0];
  const std::string& dir = ctx.args().positional[1];
  std::unique_ptr<ProgressBar> bar = ctx.Progress("save " + name);
  auto files = ctx.client().SaveAdapter(name, dir, ctx.call(), Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!files.ok()) return ctx.Fail(files.status());
  return ReportFiles(ctx, absl::StrCat("saved ", name, " to ", dir), dir, *files, {{"name", name}});
}

int RunAdaptersExport(Context& ctx) {
  const std::vector<std::string>& pos = ctx.args().positional;
  const std::string& dir = pos[0];
  const std::vector<std::string> adapters(pos.begin() + 1, pos.end());
  std::unique_ptr<ProgressBar> bar = ctx.Progress("export");
  auto files =
      ctx.client().ExportMergedModel(adapters, dir, ctx.call(), Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!files.ok()) return ctx.Fail(files.status());
  const std::string what =
      adapters.empty() ? "the base model" : "base + " + absl::StrJoin(adapters, " + ");
  return ReportFiles(ctx, absl::StrCat("exported ", what, " to ", dir), dir, *files,
                     {{"adapters", adapters}});
}

// ---- inference --------------------------------------------------------------------------------

// The prompt of generate / score: TEXT ("-" = stdin) or --token_ids. Usage message on error.
absl::Status ReadPrompt(const Args& args, std::string* text, std::vector<int32_t>* ids) {
  const bool has_ids = args.Has("token_ids");
  if (has_ids && !args.positional.empty()) {
    return absl::InvalidArgumentError("give the prompt as TEXT or with --token_ids, not both");
  }
  if (!has_ids && args.positional.empty()) {
    return absl::InvalidArgumentError("needs the prompt: a TEXT argument or --token_ids");
  }
  if (has_ids) {
    absl::StatusOr<std::vector<int32_t>> parsed = ParseTokenIds(args.All("token_ids"));
    if (!parsed.ok())
      return absl::InvalidArgumentError(absl::StrCat("--token_ids: ", parsed.status().message()));
    *ids = *std::move(parsed);
    return absl::OkStatus();
  }
  *text = args.positional[0];
  if (*text == "-")
    text->assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  return absl::OkStatus();
}

Json GeneratedTokenJson(const loraserve::GeneratedToken& t, bool logprobs) {
  Json j = {{"id", t.id}, {"index", t.index}, {"text", t.text}};
  if (logprobs) {
    j["logprob"] = t.logprob;
    Json top = Json::array();
    for (const auto& e : t.top_logprobs) top.push_back({{"id", e.id}, {"logprob", e.logprob}});
    j["top_logprobs"] = top;
  }
  return j;
}

void PrintGeneratedLogprobs(Context& ctx, const loraserve::GenerateResult& r) {
  std::set<int32_t> ids;
  for (const auto& t : r.tokens) {
    ids.insert(t.id);
    for (const auto& e : t.top_logprobs) ids.insert(e.id);
  }
  const std::map<int32_t, std::string> texts = ctx.TokenTexts(ids);
  std::vector<std::vector<std::string>> rows = {{"INDEX", "ID", "TOKEN", "LOGPROB", "TOP"}};
  for (const auto& t : r.tokens) {
    std::vector<std::string> top;
    for (const auto& e : t.top_logprobs) {
      top.push_back(absl::StrCat(e.id, " ", TextOf(texts, e.id), " ", FormatFloat(e.logprob)));
    }
    rows.push_back({absl::StrCat(t.index), absl::StrCat(t.id), TextOf(texts, t.id),
                    FormatFloat(t.logprob), absl::StrJoin(top, ", ")});
  }
  PrintTable(rows, {0, 1, 3});
}

int RunGenerate(Context& ctx) {
  const Args& args = ctx.args();
  loraserve::GenerateRequest req;
  absl::Status prompt = ReadPrompt(args, &req.text, &req.token_ids);
  if (!prompt.ok()) return ctx.Usage(std::string(prompt.message()));
  req.adapter = args.Get("adapter");
  loraserve::SamplingParams& sp = req.sampling;
  FlagValues values(args);
  values.Int("max_new_tokens", &sp.max_new_tokens, 0, std::numeric_limits<int32_t>::max());
  values.Double("temperature", &sp.temperature);
  values.Int("top_k", &sp.top_k, 0, std::numeric_limits<int32_t>::max());
  values.Double("top_p", &sp.top_p);
  values.Uint64("seed", &sp.seed);
  values.Int("top_logprobs", &sp.top_logprobs, 0, 20);
  if (!values.ok()) return ctx.Usage(values.error());
  sp.stop = args.All("stop");
  sp.ignore_eos = args.Bool("ignore_eos");
  sp.logprobs = args.Bool("logprobs") || sp.top_logprobs > 0;

  // Human output streams the text as it comes: the prompt (unless --no_echo), then each token. The
  // prompt is echoed once the first token arrived, so a call failing at once prints nothing.
  const bool stream_text = !ctx.json();
  bool started = false;
  auto start_output = [&] {
    if (started || !stream_text) return;
    started = true;
    if (!req.text.empty() && !args.Bool("no_echo")) std::fputs(req.text.c_str(), stdout);
  };
  std::unique_ptr<loraserve::GenerateStream> stream = ctx.client().StartGenerate(req, ctx.call());
  loraserve::GeneratedToken token;
  while (stream->Next(&token)) {
    start_output();
    if (stream_text) {
      std::fputs(token.text.c_str(), stdout);
      std::fflush(stdout);
    }
  }
  absl::StatusOr<loraserve::GenerateResult> r = stream->Finish();
  if (r.ok()) start_output();
  if (started) {
    std::printf("\n");
    std::fflush(stdout);
  }
  if (!r.ok()) return ctx.Fail(r.status());
  if (ctx.json()) {
    Json tokens = Json::array();
    for (const auto& t : r->tokens) tokens.push_back(GeneratedTokenJson(t, sp.logprobs));
    ctx.Emit({{"adapter", req.adapter},
              {"text", r->text},
              {"tokens", tokens},
              {"finish_reason", loraserve::FinishReasonName(r->finish_reason)},
              {"stop_string", r->stop_string},
              {"prompt_tokens", r->prompt_tokens},
              {"completion_tokens", r->completion_tokens},
              {"seed", r->seed},
              {"queue_time_ms", r->queue_time_ms},
              {"time_to_first_token_ms", r->time_to_first_token_ms}});
    return 0;
  }
  if (sp.logprobs) PrintGeneratedLogprobs(ctx, *r);
  if (!ctx.quiet()) {
    std::fprintf(stderr,
                 "[%" PRId64 " prompt + %" PRId64 " new tokens, finish: %s%s%s, seed %" PRIu64
                 ", queued %.1f ms, first token after %.1f ms]\n",
                 r->prompt_tokens, r->completion_tokens,
                 loraserve::FinishReasonName(r->finish_reason),
                 r->stop_string.empty() ? "" : " at ",
                 r->stop_string.empty() ? "" : Quote(r->stop_string).c_str(), r->seed,
                 r->queue_time_ms, r->time_to_first_token_ms);
  }
  return 0;
}

int RunScore(Context& ctx) {
  const Args& args = ctx.args();
  loraserve::ScoreRequest req;
  std::string text;
  absl::Status prompt = ReadPrompt(args, &text, &req.token_ids);
  if (!prompt.ok()) return ctx.Usage(std::string(prompt.message()));
  req.adapter = args.Get("adapter");
  FlagValues values(args);
  values.Int("top_logprobs", &req.top_logprobs, 0, 20);
  if (!values.ok()) return ctx.Usage(values.error());
  req.full_logits = args.Bool("full_logits");
  if (req.token_ids.empty()) {
    auto ids = ctx.client().Tokenize(text, !args.Bool("no_special_tokens"), false, ctx.call());
    if (!ids.ok()) return ctx.Fail(ids.status());
    req.token_ids = *std::move(ids);
  }
  auto r = ctx.client().Score(req, ctx.call());
  if (!r.ok()) return ctx.Fail(r.status());

  std::set<int32_t> ids(req.token_ids.begin(), req.token_ids.end());
  for (const auto& row : r->top_logprobs) {
    for (const auto& e : row) ids.insert(e.id);
  }
  const std::map<int32_t, std::string> texts = ctx.TokenTexts(ids);
  double total = 0;
  for (float lp : r->token_logprobs) total += lp;
  const size_t scored = r->token_logprobs.size();
  if (ctx.json()) {
    Json tokens = Json::array();
    for (int32_t id : req.token_ids)
      tokens.push_back(texts.count(id) ? Json(texts.at(id)) : Json(nullptr));
    Json top = Json::array();
    for (const auto& row : r->top_logprobs) top.push_back(TopJson(row, texts));
    Json doc = {{"adapter", req.adapter},
                {"num_tokens", r->num_tokens},
                {"vocab_size", r->vocab_size},
                {"token_ids", req.token_ids},
                {"tokens", tokens},
                {"token_logprobs", r->token_logprobs},
                {"top_logprobs", top},
                {"total_logprob", total}};
    if (req.full_logits) {
      Json logits = Json::array();  // [num_tokens][vocab_size]
      for (int64_t t = 0; t < r->num_tokens; ++t) {
        const auto row = r->logits.begin() + t * r->vocab_size;
        logits.push_back(std::vector<float>(row, row + r->vocab_size));
      }
      doc["logits"] = std::move(logits);
    }
    ctx.Emit(doc);
    return 0;
  }
  // Row t: token t, log p(token t | tokens before it), and (with --top_logprobs) what the model
  // predicted for position t.
  auto top_of = [&](size_t position) {
    std::vector<std::string> parts;
    for (const auto& e : r->top_logprobs[position]) {
      parts.push_back(absl::StrCat(e.id, " ", TextOf(texts, e.id), " ", FormatFloat(e.logprob)));
    }
    return absl::StrJoin(parts, ", ");
  };
  const bool with_top = !r->top_logprobs.empty();
  std::vector<std::vector<std::string>> rows = {{"POS", "ID", "TOKEN", "LOGPROB"}};
  if (with_top) rows[0].push_back("TOP PREDICTIONS");
  for (size_t t = 0; t < req.token_ids.size(); ++t) {
    rows.push_back({absl::StrCat(t), absl::StrCat(req.token_ids[t]),
                    TextOf(texts, req.token_ids[t]),
                    t == 0 ? "-" : FormatFloat(r->token_logprobs[t - 1])});
    if (with_top) rows.back().push_back(t == 0 ? "" : top_of(t - 1));
  }
  PrintTable(rows, {0, 1, 3});
  if (with_top) std::printf("next: %s\n", top_of(r->top_logprobs.size() - 1).c_str());
  if (req.full_logits) {
    std::printf("full logits: %lld x %lld floats received (--json prints them)\n",
                static_cast<long long>(r->num_tokens), static_cast<long long>(r->vocab_size));
  }
  std::printf("total logprob %.4f over %zu tokens", total, scored);
  if (scored > 0) std::printf(", perplexity %.4g", std::exp(-total / static_cast<double>(scored)));
  std::printf("\n");
  return 0;
}

int RunTokenize(Context& ctx) {
  const Args& args = ctx.args();
  std::string text = args.positional[0];
  if (text == "-")
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  auto ids = ctx.client().Tokenize(text, !args.Bool("no_special_tokens"),
                                   args.Bool("parse_special"), ctx.call());
  if (!ids.ok()) return ctx.Fail(ids.status());
  if (ctx.json()) {
    ctx.Emit({{"token_ids", *ids}, {"count", ids->size()}});
  } else {
    std::printf("%s\n", absl::StrJoin(*ids, " ").c_str());
  }
  return 0;
}

int RunDetokenize(Context& ctx) {
  absl::StatusOr<std::vector<int32_t>> ids = ParseTokenIds(ctx.args().positional);
  if (!ids.ok()) return ctx.Usage(std::string(ids.status().message()));
  auto text = ctx.client().Detokenize(*ids, ctx.args().Bool("skip_special_tokens"), ctx.call());
  if (!text.ok()) return ctx.Fail(text.status());
  if (ctx.json()) {
    ctx.Emit({{"text", *text}});
  } else {
    std::printf("%s\n", text->c_str());
  }
  return 0;
}

// ---- health, metrics --------------------------------------------------------------------------

int RunHealth(Context& ctx) {
  const std::string service = ctx.args().positional.empty() ? "" : ctx.args().positional[0];
  auto status = ctx.client().Health(service, ctx.call());
  if (!status.ok()) return ctx.Fail(status.status());
  const char* name = loraserve::ServingStatusName(*status);
  if (ctx.json()) {
    ctx.Emit({{"service", service},
              {"status", name},
              {"serving", *status == loraserve::ServingStatus::kServing}});
  } else {
    std::printf("%s\n", name);
  }
  return *status == loraserve::ServingStatus::kServing ? 0 : kUnavailable;
}

// GET http://address/path within `timeout`; the body of a 200 reply. UNAVAILABLE when the server
// cannot be reached or answers otherwise.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path,
                                    absl::Duration timeout) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos)
    return absl::InvalidArgumentError("metrics address must be HOST:PORT");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (getaddrinfo(host.c_str(), address.substr(colon + 1).c_str(), &hints, &res) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", address));
  }
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  if (fd >= 0) {
    timeval tv{};
    const int64_t us = absl::ToInt64Microseconds(timeout);
    tv.tv_sec = us / 1000000;
    tv.tv_usec = us % 1000000;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  const bool connected = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!connected) {
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string reply;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = reply.find("\r\n\r\n");
  if (body == std::string::npos || reply.find(" 200 ") > reply.find("\r\n")) {
    return absl::UnavailableError(absl::StrCat("bad reply from http://", address, path));
  }
  return reply.substr(body + 4);
}

// One Prometheus text-format sample line ("name{a=\"b\"} 1.5") as JSON; nullopt for comments and
// lines it cannot read.
std::optional<Json> MetricSample(const std::string& line) {
  if (line.empty() || line[0] == '#') return std::nullopt;
  size_t i = line.find_first_of("{ ");
  if (i == std::string::npos) return std::nullopt;
  Json sample = {{"name", line.substr(0, i)}, {"labels", Json::object()}};
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find("=\"", i);
      if (eq == std::string::npos) return std::nullopt;
      const std::string key = line.substr(i, eq - i);
      std::string value;
      for (i = eq + 2; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value += line[i] == 'n' ? '\n' : line[i];
        } else {
          value += line[i];
        }
      }
      sample["labels"][key] = value;
      i += 1;  // closing quote
      if (i < line.size() && line[i] == ',') ++i;
    }
    ++i;  // '}'
  }
  std::vector<std::string> rest =
      absl::StrSplit(line.substr(std::min(i, line.size())), ' ', absl::SkipEmpty());
  if (rest.empty()) return std::nullopt;
  double value;
  if (absl::SimpleAtod(rest[0], &value) && std::isfinite(value)) {
    sample["value"] = value;
  } else {
    sample["value"] = rest[0];  // +Inf, -Inf, NaN
  }
  return sample;
}

int RunMetrics(Context& ctx) {
  const Args& args = ctx.args();
  const char* env = std::getenv("LORASERVE_METRICS_ADDR");
  const std::string addr =
      args.Get("metrics_addr", env != nullptr && *env ? env : kDefaultMetricsAddress);
  absl::Duration timeout = absl::Seconds(30);
  if (args.Has("timeout") && !ParseTimeout(args.Get("timeout"), &timeout)) {
    return ctx.Usage("--timeout wants a positive duration");
  }
  auto text = HttpGet(addr, "/metrics", timeout);
  if (!text.ok()) return ctx.Fail(text.status());
  const std::string prefix = args.positional.empty() ? "" : args.positional[0];
  Json samples = Json::array();
  for (absl::string_view piece : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    const std::string line(piece);
    if (ctx.json()) {
      std::optional<Json> sample = MetricSample(line);
      if (sample && (*sample)["name"].get<std::string>().rfind(prefix, 0) == 0)
        samples.push_back(*sample);
    } else if (line.rfind(prefix, 0) == 0) {
      std::printf("%s\n", line.c_str());
    }
  }
  if (ctx.json()) ctx.Emit({{"metrics_addr", addr}, {"samples", samples}});
  return 0;
}

// ---- The table --------------------------------------------------------------------------------

Command Cmd(std::string name, std::string synopsis, size_t min_args, size_t max_args,
            int (*run)(Context&), std::string summary, std::string details = "",
            std::vector<FlagSpec> flags = {}) {
  Command c;
  c.name = std::move(name);
  c.synopsis = std::move(synopsis);
  c.min_args = min_args;
  c.max_args = max_args;
  c.run = run;
  c.summary = std::move(summary);
  c.details = std::move(details);
  c.flags = std::move(flags);
  return c;
}

const std::vector<Command>& Commands() {
  static const std::vector<Command>* commands = [] {
    const FlagSpec adapter = {"adapter", FlagKind::kValue, "NAME",
                              "adapter to apply (default: the base model)"};
    const FlagSpec token_ids = {"token_ids", FlagKind::kList, "IDS",
                                "the prompt as token ids (\"1,2,3\" or \"1 2 3\") instead of TEXT"};
    const FlagSpec top_logprobs = {"top_logprobs", FlagKind::kValue, "K",
                                   "also the K most likely tokens at each position, 0 to 20"};
    auto* c = new std::vector<Command>;
    c->push_back(Cmd("adapters list", "", 0, 0, RunAdaptersList,
                     "every adapter with its state, rank, size and checksum"));
    c->push_back(Cmd("adapters get", "NAME", 1, 1, RunAdaptersGet, "one adapter in detail"));
    c->push_back(Cmd("adapters load", "NAME PATH", 2, 2, RunAdaptersLoad,
                     "load a PEFT directory on the server as NAME",
                     "PATH is relative to the server's --adapter_root. Loading the same files\n"
                     "under the same name again answers OK (\"already loaded\")."));
    c->push_back(Cmd("adapters upload", "NAME DIR", 2, 2, RunAdaptersUpload,
                     "send the local PEFT directory DIR and load it as NAME",
                     "Every regular file below DIR is sent in chunks with its SHA-256. A progress\n"
                     "bar is shown on stderr when it is a terminal (or with --progress)."));
    c->push_back(Cmd("adapters delete", "NAME", 1, 1, RunAdaptersDelete,
                     "unload an adapter (requests already using it finish)"));
    c->push_back(Cmd("adapters merge", "NAME", 1, 1, RunAdaptersMerge,
                     "merge an adapter into the base weights"));
    c->push_back(Cmd("adapters unmerge", "NAME", 1, 1, RunAdaptersUnmerge,
                     "restore the base weights bit for bit"));
    c->push_back(Cmd(
        "adapters combine", "NAME SOURCE[:WEIGHT]...", 2, kUnlimited, RunAdaptersCombine,
        "combine adapters into one (PEFT add_weighted_adapter)",
        "Each SOURCE is a loaded adapter with an optional weight (default 1; may be negative).",
        {{"type", FlagKind::kValue, "TYPE",
          "linear | cat | svd | ties | ties_svd | dare_linear | dare_ties |\n"
          "dare_linear_svd | dare_ties_svd | magnitude_prune | magnitude_prune_svd\n"
          "(default svd)"},
         {"svd_rank", FlagKind::kValue, "N",
          "SVD types: rank of the result (default: the largest source rank)"},
         {"svd_clamp", FlagKind::kValue, "Q",
          "SVD types: clamp at this quantile in (0, 1) (default: none)"},
         {"density", FlagKind::kValue, "D",
          "ties / dare / magnitude_prune: fraction kept, in (0, 1] (default 1)"},
         {"majority_sign_method", FlagKind::kValue, "M", "ties: total | frequency (default total)"},
         {"seed", FlagKind::kValue, "S", "dare: seed of the random masks (default 0)"}}));
    c->push_back(Cmd("adapters save", "NAME DIR", 2, 2, RunAdaptersSave,
                     "write an adapter as a PEFT directory into the local DIR",
                     "Writes adapter_config.json and adapter_model.safetensors (DIR is created if\n"
                     "missing; files of the same names are replaced); SHA-256s are verified."));
    c->push_back(
        Cmd("adapters export", "DIR [ADAPTER...]", 1, kUnlimited, RunAdaptersExport,
            "write the base model with ADAPTERs merged into DIR",
            "A Hugging Face checkpoint (config.json, model.safetensors, tokenizer files):\n"
            "PEFT merge_and_unload of the given adapters; none = the base model."));
    c->push_back(Cmd("adapters unload-all", "", 0, 0, RunAdaptersUnloadAll,
                     "unmerge and delete every adapter"));
    c->push_back(Cmd(
        "generate", "[TEXT]", 0, 1, RunGenerate,
        "stream a continuation of TEXT (\"-\" = stdin) to stdout",
        "The prompt is echoed, then tokens are printed as they arrive; a summary (token counts,\n"
        "finish reason, seed, latency) goes to stderr. With --logprobs a per-token table follows.",
        {adapter,
         token_ids,
         {"max_new_tokens", FlagKind::kValue, "N", "upper bound on new tokens (default 128)"},
         {"temperature", FlagKind::kValue, "T", "0 = greedy (default 1)"},
         {"top_k", FlagKind::kValue, "K", "sample from the K most likely tokens (default 0 = off)"},
         {"top_p", FlagKind::kValue, "P", "nucleus sampling, in (0, 1] (default 1 = off)"},
         {"seed", FlagKind::kValue, "S", "sampling seed (default: drawn by the server, reported)"},
         {"stop", FlagKind::kList, "TEXT", "stop when the text contains TEXT"},
         {"ignore_eos", FlagKind::kBool, "", "keep going past end-of-sequence tokens"},
         {"logprobs", FlagKind::kBool, "", "log-probability of each new token"},
         top_logprobs,
         {"no_echo", FlagKind::kBool, "", "do not print the prompt before the continuation"}}));
    c->push_back(Cmd(
        "score", "[TEXT]", 0, 1, RunScore, "log-probability of each token given the ones before it",
        "TEXT is tokenized by the server (with BOS unless --no_special_tokens).",
        {adapter,
         token_ids,
         top_logprobs,
         {"full_logits", FlagKind::kBool, "",
          "also fetch every position's logits (--json: \"logits\", num_tokens x vocab_size)"},
         {"no_special_tokens", FlagKind::kBool, "", "tokenize TEXT without special tokens"}}));
    c->push_back(Cmd("tokenize", "TEXT", 1, 1, RunTokenize,
                     "token ids of TEXT (\"-\" = stdin), with BOS", "",
                     {{"no_special_tokens", FlagKind::kBool, "", "do not add special tokens (BOS)"},
                      {"parse_special", FlagKind::kBool, "",
                       "turn special-token text such as </s> into those tokens"}}));
    c->push_back(Cmd("detokenize", "ID...", 1, kUnlimited, RunDetokenize,
                     "text of token ids (\"1,2,3\" or separate arguments)", "",
                     {{"skip_special_tokens", FlagKind::kBool, "", "leave out special tokens"}}));
    c->push_back(Cmd("health", "[SERVICE]", 0, 1, RunHealth,
                     "grpc.health.v1 status (exit 14 unless SERVING)"));
    Command metrics = Cmd(
        "metrics", "[PREFIX]", 0, 1, RunMetrics, "Prometheus /metrics (names starting with PREFIX)",
        "Plain HTTP to the server's --metrics_listen. With --json:\n"
        "{\"samples\": [{\"name\", \"labels\", \"value\"}]}.",
        {{"metrics_addr", FlagKind::kValue, "HOST:PORT",
          "the server's --metrics_listen (env LORASERVE_METRICS_ADDR; default 127.0.0.1:9464)"}});
    metrics.needs_client = false;
    c->push_back(std::move(metrics));
    return c;
  }();
  return *commands;
}

const Command* FindCommand(const std::string& name) {
  for (const auto& c : Commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

bool IsGroup(const std::string& word) { return word == "adapters"; }

// --json anywhere before "--": usage errors are then reported as JSON too.
bool WantsJson(const std::vector<std::string>& argv) {
  for (const auto& a : argv) {
    if (a == "--") break;
    if (a == "--json" || a == "--json=true") return true;
  }
  return false;
}

int Main(const std::vector<std::string>& argv) {
  const bool json = WantsJson(argv);
  Args args;
  size_t pos = 0;
  absl::Status parsed =
      ParseFlags(argv, &pos, {&GlobalFlags()}, /*stop_at_positional=*/true, &args);
  if (!parsed.ok()) return UsageBeforeCommand(json, std::string(parsed.message()));
  if (pos == argv.size()) {
    if (args.help) {
      PrintMainHelp(stdout);
      return 0;
    }
    PrintMainHelp(stderr);
    return kUsageError;
  }
  std::string name = argv[pos++];
  bool help = args.help;
  if (name == "help") {  // loractl help [COMMAND...]
    help = true;
    if (pos == argv.size()) {
      PrintMainHelp(stdout);
      return 0;
    }
    name = argv[pos++];
  }
  if (IsGroup(name)) {
    if (pos == argv.size() || argv[pos].rfind("-", 0) == 0) {
      const bool group_help =
          help || (pos < argv.size() && (argv[pos] == "--help" || argv[pos] == "-h"));
      if (group_help) {
        PrintGroupHelp(stdout, name);
        return 0;
      }
      if (!json) PrintGroupHelp(stderr, name);
      return UsageBeforeCommand(json, absl::StrCat(name, " needs a subcommand"));
    }
    name += " " + argv[pos++];
  }
  const Command* command = FindCommand(name);
  if (command == nullptr)
    return UsageBeforeCommand(json, absl::StrCat("unknown command \"", name, "\""));
  parsed = ParseFlags(argv, &pos, {&command->flags, &GlobalFlags()}, /*stop_at_positional=*/false,
                      &args);
  Context ctx(*command, args, json);
  if (help || args.help) {
    PrintCommandHelp(stdout, *command);
    return 0;
  }
  if (!parsed.ok()) return ctx.Usage(std::string(parsed.message()));
  const size_t n = args.positional.size();
  if (n < command->min_args || n > command->max_args) {
    return ctx.Usage(absl::StrCat("usage: loractl ", command->name,
                                  command->synopsis.empty() ? "" : " ", command->synopsis));
  }
  if (command->needs_client) {
    if (const int rc = ctx.Connect(); rc != 0) return rc;
  }
  return command->run(ctx);
}

}  // namespace

int main(int argc, char** argv) {
  // gRPC core logs connection failures (e.g. a TLS handshake) on stderr; the failed call's status
  // already says it. GRPC_VERBOSITY set by the caller still wins.
  setenv("GRPC_VERBOSITY", "NONE", /*overwrite=*/0);
  return Main(std::vector<std::string>(argv + 1, argv + argc));
}
