#include "client/loractl/context.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/loractl/flags.h"

namespace loraserve::loractl {
namespace {

constexpr size_t kMaxTokenTexts = 65536;  // distinct ids detokenized for logprob tables

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string OneLineJson(const Json& doc) {
  return doc.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

void AddGlobalFlags(CLI::App* root, GlobalFlags* flags) {
  AddString(root,
            {"addr", "HOST:PORT", "server address (env LORASERVE_ADDR; default 127.0.0.1:50051)"},
            &flags->client.address)
      ->envname("LORASERVE_ADDR");
  AddDuration(root,
              {"timeout", "DURATION",
               "deadline of each call, retries included: seconds or 500ms, 2m "
               "(default 30)"},
              &flags->client.default_deadline);
  AddInt(root,
         {"retries", "N",
          "retry idempotent calls N times on UNAVAILABLE / a full queue "
          "(default 3)"},
         &flags->retries, 0, 100);
  AddString(root, {"request_id", "ID", "send x-request-id ID (default: the server makes one)"},
            &flags->request_id);
  AddString(root, {"token", "TOKEN", "bearer token (env LORASERVE_TOKEN)"}, &flags->token);
  AddString(root, {"token_file", "FILE", "read the bearer token from FILE (first line)"},
            &flags->token_file);
  AddFlag(root, "tls", &flags->client.tls.enabled,
          "connect with TLS (the system's roots unless --tls_ca_file)");
  AddString(root, {"tls_ca_file", "FILE", "PEM root certificate(s) to verify the server with"},
            &flags->tls_ca_file);
  AddString(root,
            {"tls_cert_file", "FILE",
             "PEM client certificate chain for mutual TLS (with --tls_key_file)"},
            &flags->tls_cert_file);
  AddString(root, {"tls_key_file", "FILE", "PEM client private key for mutual TLS"},
            &flags->tls_key_file);
  AddString(root,
            {"tls_server_name", "NAME",
             "name expected in the server's certificate (default: the host of "
             "--addr)"},
            &flags->tls_server_name);
  AddFlag(root, "json", &flags->json,
          "one JSON document on stdout; errors as {\"error\": {...}} on stderr");
  AddFlag(root, "quiet", &flags->quiet, "nothing on stderr but errors (no progress, no summaries)");
  AddFlag(root, "all", &flags->all,
          "run the command on every replica: each address the --addr host resolves to (a "
          "Kubernetes headless Service has one per ready pod), or each entry of an "
          "ipv4:A:PORT,B:PORT list; management and health commands only");
  AddFlag(root, "progress", &flags->progress,
          "transfer progress bars even when stderr is no terminal (or with "
          "--json)");
}

int UsageError(bool json, const std::string& message) {
  if (json) {
    Json doc = {{"error", {{"code", "USAGE"}, {"code_number", kUsageError}, {"message", message}}}};
    std::fprintf(stderr, "%s\n", OneLineJson(doc).c_str());
  } else {
    std::fprintf(stderr, "loractl: %s (see loractl --help)\n", message.c_str());
  }
  return kUsageError;
}

int Context::Connect() {
  loraserve::ClientOptions options = flags_.client;
  options.retry.max_attempts = flags_.retries + 1;

  if (flags_.token && flags_.token_file) return Usage("give --token or --token_file, not both");
  if (flags_.token) {
    options.bearer_token = *flags_.token;
  } else if (flags_.token_file) {
    absl::StatusOr<std::string> text = ReadFile(*flags_.token_file);
    if (!text.ok()) return Usage(absl::StrCat("--token_file: ", text.status().message()));
    const std::string first_line = text->substr(0, text->find('\n'));
    options.bearer_token = std::string(absl::StripAsciiWhitespace(first_line));
    if (options.bearer_token.empty()) return Usage("--token_file: the file holds no token");
  } else if (const char* env = std::getenv("LORASERVE_TOKEN"); env != nullptr) {
    options.bearer_token = std::string(absl::StripAsciiWhitespace(env));
  }

  loraserve::TlsOptions& tls = options.tls;
  const struct {
    const char* flag;
    const std::optional<std::string>& path;
    std::string* pem;
  } files[] = {{"tls_ca_file", flags_.tls_ca_file, &tls.root_certs_pem},
               {"tls_cert_file", flags_.tls_cert_file, &tls.client_cert_pem},
               {"tls_key_file", flags_.tls_key_file, &tls.client_key_pem}};
  for (const auto& file : files) {
    if (!file.path.has_value()) continue;
    absl::StatusOr<std::string> text = ReadFile(*file.path);
    if (!text.ok()) return Usage(absl::StrCat("--", file.flag, ": ", text.status().message()));
    *file.pem = *std::move(text);
    tls.enabled = true;
  }
  if (flags_.tls_cert_file.has_value() != flags_.tls_key_file.has_value()) {
    return Usage("--tls_cert_file and --tls_key_file go together");
  }
  if (flags_.tls_server_name) {
    tls.server_name_override = *flags_.tls_server_name;
    tls.enabled = true;
  }

  absl::StatusOr<std::unique_ptr<loraserve::Client>> client = loraserve::Client::Create(options);
  if (!client.ok()) return Usage(std::string(client.status().message()));
  client_ = *std::move(client);
  return 0;
}

loraserve::CallOptions Context::call() const {
  loraserve::CallOptions call;
  call.request_id = flags_.request_id;
  return call;
}

int Context::Fail(const absl::Status& status) const {
  const std::string rid = loraserve::RequestIdOf(status);
  if (json()) {
    Json error = {{"code", absl::StatusCodeToString(status.code())},
                  {"code_number", static_cast<int>(status.code())},
                  {"message", std::string(status.message())},
                  {"request_id", rid.empty() ? Json(nullptr) : Json(rid)}};
    if (capture_ != nullptr) {
      (*capture_)["error"] = std::move(error);
    } else {
      std::fprintf(stderr, "%s\n", OneLineJson(Json{{"error", error}}).c_str());
    }
  } else {
    std::fprintf(stderr, "loractl: %s%s: %s: %s%s\n", command_.c_str(),
                 replica_.empty() ? "" : absl::StrCat(" (", replica_, ")").c_str(),
                 absl::StatusCodeToString(status.code()).c_str(),
                 std::string(status.message()).c_str(),
                 rid.empty() ? "" : absl::StrCat(" (request id ", rid, ")").c_str());
  }
  const int code = static_cast<int>(status.code());
  return code == 0 ? 2 : code;  // never report success for a failure
}

int Context::Usage(const std::string& message) const {
  if (json()) return UsageError(true, message);
  std::fprintf(stderr, "loractl: %s: %s (see loractl %s --help)\n", command_.c_str(),
               message.c_str(), command_.c_str());
  return kUsageError;
}

void Context::Emit(const Json& doc) const {
  if (capture_ != nullptr) {
    (*capture_)["result"] = doc;
    return;
  }
  std::printf("%s\n", doc.dump(2, ' ', false, Json::error_handler_t::replace).c_str());
}

std::unique_ptr<ProgressBar> Context::Progress(const std::string& label) const {
  const bool tty = isatty(STDERR_FILENO) != 0;
  const bool show = !quiet() && (flags_.progress || (!json() && tty));
  return show ? std::make_unique<ProgressBar>(label, tty) : nullptr;
}

loraserve::ProgressCallback Context::Callback(ProgressBar* bar) {
  if (bar == nullptr) return nullptr;
  return [bar](const loraserve::TransferProgress& p) { bar->Update(p); };
}

std::map<int32_t, std::string> Context::TokenTexts(const std::set<int32_t>& ids) {
  std::map<int32_t, std::string> texts;
  if (ids.empty() || ids.size() > kMaxTokenTexts) return texts;
  const std::vector<int32_t> list(ids.begin(), ids.end());
  absl::StatusOr<std::vector<std::string>> got = client_->TokenTexts(list, call());
  if (!got.ok()) return texts;
  for (size_t i = 0; i < list.size(); ++i) texts[list[i]] = (*got)[i];
  return texts;
}

std::string TextOf(const std::map<int32_t, std::string>& texts, int32_t id) {
  auto it = texts.find(id);
  return it == texts.end() ? "" : Quote(it->second);
}

}  // namespace loraserve::loractl
