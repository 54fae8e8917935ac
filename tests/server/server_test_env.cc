#include "tests/server/server_test_env.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/io/json_file.h"
#include "core/io/safetensors.h"
#include "tests/testing/fixtures.h"

namespace loraserve::testing {

GatedEngine::GatedEngine(std::unique_ptr<core::Engine> inner) : inner_(std::move(inner)) {
  inner_->SetStepObserver([this](int b, int a, int t, absl::Duration d) { OnStep(b, a, t, d); });
}

GatedEngine::~GatedEngine() {
  Resume();
  Shutdown(absl::Now());
}

void GatedEngine::PauseAfterNextStep() {
  absl::MutexLock lock(&mu_);
  pause_requested_ = true;
}

bool GatedEngine::WaitUntilPaused(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto paused = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return paused_; };
  return mu_.AwaitWithTimeout(absl::Condition(&paused), timeout);
}

void GatedEngine::Resume() {
  absl::MutexLock lock(&mu_);
  pause_requested_ = false;
  gated_activity_ = false;
}

int64_t GatedEngine::steps() const {
  absl::MutexLock lock(&mu_);
  return steps_;
}

class GatedEngine::CountingHandle : public core::RequestHandle {
 public:
  CountingHandle(std::shared_ptr<core::RequestHandle> inner, GatedEngine* owner)
      : inner_(std::move(inner)), owner_(owner) {}
  void Cancel() override {
    inner_->Cancel();
    owner_->CountCancel();
  }

 private:
  std::shared_ptr<core::RequestHandle> inner_;
  GatedEngine* owner_;
};

absl::StatusOr<std::shared_ptr<core::RequestHandle>> GatedEngine::SubmitGenerate(
    core::GenerateRequest request, core::GenerateCallbacks callbacks) {
  bool gated;
  {
    absl::MutexLock lock(&mu_);
    gated = pause_requested_;
  }
  if (gated) {
    callbacks.on_token = [this, on_token = std::move(callbacks.on_token)](const core::TokenEvent& e) {
      {
        absl::MutexLock lock(&mu_);
        gated_activity_ = true;
      }
      if (on_token) on_token(e);
    };
  }
  auto handle = inner_->SubmitGenerate(std::move(request), std::move(callbacks));
  if (!handle.ok()) return handle.status();
  return std::shared_ptr<core::RequestHandle>(std::make_shared<CountingHandle>(*handle, this));
}

void GatedEngine::CountCancel() {
  absl::MutexLock lock(&mu_);
  ++cancels_;
}

int64_t GatedEngine::cancels() const {
  absl::MutexLock lock(&mu_);
  return cancels_;
}

bool GatedEngine::WaitForCancels(int64_t n, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancels_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

void GatedEngine::SetStepObserver(core::StepObserver observer) {
  absl::MutexLock lock(&mu_);
  observer_ = std::move(observer);
}

void GatedEngine::Shutdown(absl::Time deadline) { inner_->Shutdown(deadline); }

void GatedEngine::OnStep(int batch_size, int distinct_adapters, int new_tokens,
                         absl::Duration step_time) {
  core::StepObserver observer;
  {
    absl::MutexLock lock(&mu_);
    ++steps_;
    observer = observer_;
  }
  if (observer) observer(batch_size, distinct_adapters, new_tokens, step_time);
  absl::MutexLock lock(&mu_);
  if (!pause_requested_ || !gated_activity_) return;
  paused_ = true;
  auto resumed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pause_requested_; };
  mu_.Await(absl::Condition(&resumed));
  paused_ = false;
}

server::LogSink LogCapture::Sink() {
  return [this](absl::string_view line) {
    absl::MutexLock lock(&mu_);
    lines_.emplace_back(line);
  };
}

std::vector<std::string> LogCapture::Lines() const {
  absl::MutexLock lock(&mu_);
  return lines_;
}

std::vector<std::string> LogCapture::Matching(const std::vector<std::string>& needles) const {
  std::vector<std::string> out;
  for (const std::string& line : Lines()) {
    bool all = true;
    for (const auto& n : needles) all = all && line.find(n) != std::string::npos;
    if (all) out.push_back(line);
  }
  return out;
}

std::string ModelDir() { return SharedPath("fixtures/models/stories260K"); }
std::string PeftRoot() { return SharedPath("fixtures/peft"); }

absl::StatusOr<std::vector<float>> ScoreLogits(Client& client, const std::string& adapter) {
  ScoreRequest r;
  r.adapter = adapter;
  r.token_ids = {1, 403, 407, 261, 378};
  r.full_logits = true;
  absl::StatusOr<ScoreResult> s = client.Score(r);
  if (!s.ok()) return s.status();
  return s->logits;
}

TestServerOptions TestServer::DefaultOptions() {
  TestServerOptions o;
  o.engine.model_dir = ModelDir();
  o.engine.num_threads = 1;
  o.engine.max_wait = absl::ZeroDuration();
  o.server.listen_address = "127.0.0.1:0";
  o.server.metrics_listen = "127.0.0.1:0";
  o.server.adapter_root = PeftRoot();
  return o;
}

absl::StatusOr<std::unique_ptr<TestServer>> TestServer::Start(TestServerOptions options) {
  std::unique_ptr<TestServer> t(new TestServer());
  t->options_ = options;
  t->logs_ = std::make_unique<LogCapture>();
  if (!options.server.log_sink) options.server.log_sink = t->logs_->Sink();
  auto server = server::Server::Start(options.server);
  if (!server.ok()) return server.status();
  t->server_ = *std::move(server);
  t->client_ = t->NewClient();
  if (options.attach_engine) {
    absl::Status s = t->AttachEngine();
    if (!s.ok()) return s;
  }
  return t;
}

absl::Status TestServer::AttachEngine() {
  auto engine = core::Engine::Create(options_.engine);
  if (!engine.ok()) return engine.status();
  engine_ = std::make_shared<GatedEngine>(*std::move(engine));
  server_->AttachEngine(engine_);
  return absl::OkStatus();
}

TestServer::~TestServer() {
  // Never leave the engine thread parked on the gate.
  if (engine_ != nullptr) engine_->Resume();
  client_.reset();
  server_.reset();
}

std::unique_ptr<Client> TestServer::NewClient() const { return NewClient(options_.client); }

std::unique_ptr<Client> TestServer::NewClient(ClientOptions options) const {
  options.address = address();
  auto client = Client::Create(options);
  return client.ok() ? *std::move(client) : nullptr;
}

std::string TestServer::address() const { return absl::StrCat("127.0.0.1:", server_->port()); }

absl::StatusOr<std::string> TestServer::Metrics() const {
  return HttpGet(server_->metrics_port(), "/metrics");
}

absl::StatusOr<std::optional<double>> TestServer::Metric(
    const std::string& name, const std::map<std::string, std::string>& labels) const {
  auto text = Metrics();
  if (!text.ok()) return text.status();
  return FindMetric(*text, name, labels);
}

absl::StatusOr<HttpReply> HttpRequest(int port, const std::string& method, const std::string& path,
                                      const std::string& body, const std::map<std::string, std::string>& headers) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(30);
  const httplib::Headers h(headers.begin(), headers.end());
  httplib::Result res = method == "GET"      ? client.Get(path.c_str(), h)
                        : method == "HEAD"   ? client.Head(path.c_str(), h)
                        : method == "POST"   ? client.Post(path.c_str(), h, body, "text/plain")
                        : method == "DELETE" ? client.Delete(path.c_str(), h)
                                             : httplib::Result(nullptr, httplib::Error::Unknown);
  if (!res) {
    return absl::UnavailableError(absl::StrCat(method, " ", path, " on port ", port, ": ", httplib::to_string(res.error())));
  }
  HttpReply reply;
  reply.status = res->status;
  reply.body = res->body;
  for (const auto& [k, v] : res->headers) reply.headers[k] = v;
  return reply;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  auto reply = HttpRequest(port, "GET", path);
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) return absl::InternalError(absl::StrCat("HTTP ", reply->status, ": ", reply->body));
  return reply->body;
}

std::optional<double> FindMetric(const std::string& text, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    if (!absl::ConsumePrefix(&line, name)) continue;
    std::map<std::string, std::string> found;
    if (!line.empty() && line.front() == '{') {
      const size_t close = line.find('}');
      if (close == absl::string_view::npos) continue;
      for (absl::string_view pair : absl::StrSplit(line.substr(1, close - 1), ',', absl::SkipEmpty())) {
        const size_t eq = pair.find('=');
        if (eq == absl::string_view::npos) continue;
        std::string value(pair.substr(eq + 1));
        if (value.size() >= 2 && value.front() == '"') value = value.substr(1, value.size() - 2);
        found[std::string(pair.substr(0, eq))] = value;
      }
      line.remove_prefix(close + 1);
    }
    if (line.empty() || line.front() != ' ') continue;  // a longer metric name
    if (found != labels) continue;
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    double v = 0;
    if (!parts.empty() && absl::SimpleAtod(parts[0], &v)) return v;
  }
  return std::nullopt;
}

std::vector<std::vector<int32_t>> FixturePrompts(const std::string& peft_case) {
  std::vector<std::vector<int32_t>> out;
  auto json = core::ReadJsonFile(SharedPath(absl::StrCat("fixtures/peft/", peft_case, "/expected.json")));
  if (!json.ok()) return out;
  for (const auto& p : (*json)["prompts"]) out.push_back(p["ids"].get<std::vector<int32_t>>());
  return out;
}

std::vector<float> FixtureTensor(const std::string& peft_case, const std::string& name) {
  auto file = core::SafetensorsFile::Open(
      SharedPath(absl::StrCat("fixtures/peft/", peft_case, "/expected.safetensors")));
  if (!file.ok()) return {};
  const core::SafetensorsEntry* e = (*file)->Find(name);
  if (e == nullptr || e->dtype != core::DType::kF32) return {};
  absl::Span<const uint8_t> bytes = (*file)->Bytes(*e);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

double AllcloseExcess(const std::vector<float>& a, const std::vector<float>& b, double rtol) {
  if (a.size() != b.size() || a.empty()) return std::numeric_limits<double>::infinity();
  double worst = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]) - rtol * std::abs(static_cast<double>(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, d);
  }
  return worst;
}

}  // namespace loraserve::testing
