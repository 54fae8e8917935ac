// In-process loraserve for server tests: the stories260K engine (from ../shared) behind a
// GatedEngine, a Server on 127.0.0.1:0 with /metrics on 127.0.0.1:0, and the real client library.
//
// GatedEngine forwards everything to the real engine; its step observer can hold the engine thread
// after a step (PauseAfterNextStep / WaitUntilPaused / Resume), which lets tests build a queue, a
// batch or a drain deterministically instead of racing the engine.
#ifndef LORASERVE_TESTS_SERVER_SERVER_TEST_ENV_H_
#define LORASERVE_TESTS_SERVER_SERVER_TEST_ENV_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "core/engine/engine.h"
#include "server/server.h"

namespace loraserve::testing {

class GatedEngine : public core::Engine {
 public:
  explicit GatedEngine(std::unique_ptr<core::Engine> inner);
  ~GatedEngine() override;

  // The engine thread will block after the first step in which a generation submitted after this
  // call produced a token, until Resume(). (A step already under way, e.g. the last step of an
  // earlier request whose result the test just received, never pauses.)
  void PauseAfterNextStep();
  // True once the engine thread is blocked (false after `timeout`).
  bool WaitUntilPaused(absl::Duration timeout = absl::Seconds(10));
  void Resume();
  // Steps observed so far.
  int64_t steps() const;

  // Cancel() calls on handles of this engine so far; WaitForCancels waits for `n` of them.
  int64_t cancels() const;
  bool WaitForCancels(int64_t n, absl::Duration timeout = absl::Seconds(10));

  // Wraps the handle to count Cancel() calls.
  absl::StatusOr<std::shared_ptr<core::RequestHandle>> SubmitGenerate(
      core::GenerateRequest request, core::GenerateCallbacks callbacks) override;
  void SubmitScore(core::ScoreRequest request,
                   std::function<void(absl::StatusOr<core::ScoreResult>)> on_done) override {
    inner_->SubmitScore(std::move(request), std::move(on_done));
  }
  std::vector<int32_t> Tokenize(const std::string& text, bool add_special_tokens,
                                bool parse_special) const override {
    return inner_->Tokenize(text, add_special_tokens, parse_special);
  }
  std::string Detokenize(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    return inner_->Detokenize(ids, skip_special_tokens);
  }
  std::vector<std::string> MergedAdapters() const override { return inner_->MergedAdapters(); }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t max_context() const override { return inner_->max_context(); }
  std::string model_name() const override { return inner_->model_name(); }
  std::string model_fingerprint() const override { return inner_->model_fingerprint(); }
  absl::StatusOr<std::string> ApplyChatTemplate(const core::Json& messages, bool add_generation_prompt) const override {
    return inner_->ApplyChatTemplate(messages, add_generation_prompt);
  }
  absl::StatusOr<core::AdapterInfo> LoadAdapter(const std::string& name, const std::string& dir,
                                                bool register_only) override {
    return inner_->LoadAdapter(name, dir, register_only);
  }
  absl::Status DeleteAdapter(const std::string& name) override { return inner_->DeleteAdapter(name); }
  absl::StatusOr<core::AdapterInfo> GetAdapter(const std::string& name) const override {
    return inner_->GetAdapter(name);
  }
  std::vector<core::AdapterInfo> ListAdapters() const override { return inner_->ListAdapters(); }
  void MergeAdapter(const std::string& name,
                    std::function<void(absl::StatusOr<bool>)> done) override {
    inner_->MergeAdapter(name, std::move(done));
  }
  void UnmergeAdapter(const std::string& name, std::function<void(absl::Status)> done) override {
    inner_->UnmergeAdapter(name, std::move(done));
  }
  void UnloadAll(std::function<void(absl::Status)> done) override { inner_->UnloadAll(std::move(done)); }
  void CombineAdapters(const std::string& name, const std::vector<std::string>& sources,
                       const core::CombineOptions& options,
                       std::function<void(absl::StatusOr<core::AdapterInfo>)> done) override {
    inner_->CombineAdapters(name, sources, options, std::move(done));
  }
  void SaveAdapter(const std::string& name, const std::string& dir,
                   std::function<void(absl::Status)> done) override {
    inner_->SaveAdapter(name, dir, std::move(done));
  }
  void ExportMergedModel(const std::vector<std::string>& names, const std::string& dir,
                         std::function<void(absl::Status)> done) override {
    inner_->ExportMergedModel(names, dir, std::move(done));
  }
  core::EngineStats stats() const override { return inner_->stats(); }
  void SetStepObserver(core::StepObserver observer) override;
  // Does not resume a paused engine: a drain waits for the test to Resume() (the destructor
  // resumes before shutting down).
  void Shutdown(absl::Time deadline) override;

 private:
  void OnStep(int batch_size, int distinct_adapters, int new_tokens, absl::Duration step_time);
  void CountCancel();
  class CountingHandle;

  std::unique_ptr<core::Engine> inner_;
  mutable absl::Mutex mu_;
  core::StepObserver observer_ ABSL_GUARDED_BY(mu_);
  bool pause_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t cancels_ ABSL_GUARDED_BY(mu_) = 0;
  // A generation submitted while a pause was requested has produced a token.
  bool gated_activity_ ABSL_GUARDED_BY(mu_) = false;
};

// Thread-safe list of the server's log lines.
class LogCapture {
 public:
  server::LogSink Sink();
  std::vector<std::string> Lines() const;
  // Lines containing every one of `needles`.
  std::vector<std::string> Matching(const std::vector<std::string>& needles) const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

struct TestServerOptions {
  core::EngineOptions engine;      // model_dir defaults to stories260K
  server::ServerOptions server;    // listen/metrics addresses default to 127.0.0.1:0
  bool attach_engine = true;       // false: the test attaches (health before warm-up)
  // The clients' options (client(), NewClient()): TLS, bearer token, retries; the address is the
  // server's.
  ClientOptions client;
};

// Engine + server + client. Needs ../shared (callers start with LORASERVE_REQUIRE_SHARED()).
class TestServer {
 public:
  // Defaults: stories260K, adapter root = shared/fixtures/peft, max_wait 0.
  static TestServerOptions DefaultOptions();
  static absl::StatusOr<std::unique_ptr<TestServer>> Start(TestServerOptions options);
  ~TestServer();

  // Creates the engine and attaches it (when options.attach_engine was false).
  absl::Status AttachEngine();

  Client& client() { return *client_; }
  // A second client (e.g. for concurrent streams on separate channels).
  std::unique_ptr<Client> NewClient() const;
  // A client with other options (e.g. another bearer token); the address is set to the server's.
  std::unique_ptr<Client> NewClient(ClientOptions options) const;
  server::Server& server() { return *server_; }
  GatedEngine& engine() { return *engine_; }
  LogCapture& logs() { return *logs_; }
  std::string address() const;

  // GET http://127.0.0.1:<metrics port>/metrics.
  absl::StatusOr<std::string> Metrics() const;
  // The value of the sample `name{labels}` (labels matched exactly, in any order), or nullopt.
  absl::StatusOr<std::optional<double>> Metric(const std::string& name,
                                               const std::map<std::string, std::string>& labels = {}) const;

 private:
  TestServer() = default;
  TestServerOptions options_;
  std::unique_ptr<LogCapture> logs_;
  std::unique_ptr<server::Server> server_;
  std::shared_ptr<GatedEngine> engine_;
  std::unique_ptr<Client> client_;
};

struct HttpReply {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
};
// `method` (GET, HEAD, POST, DELETE) `path` on 127.0.0.1:`port` with `headers`; Unavailable if it
// cannot connect or gets no reply.
absl::StatusOr<HttpReply> HttpRequest(int port, const std::string& method, const std::string& path,
                                      const std::string& body = "",
                                      const std::map<std::string, std::string>& headers = {});
// GET `path` from 127.0.0.1:`port`: the body on status 200, Internal("HTTP <status>: <body>")
// otherwise.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// The value of the exposition-format sample `name{labels}` in `text`, or nullopt.
std::optional<double> FindMetric(const std::string& text, const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});

// The stories260K model directory and the PEFT fixture root in ../shared.
std::string ModelDir();
std::string PeftRoot();

// Full Score logits of "Once upon a time" (ids 1 403 407 261 378) through `adapter` ("" = base).
absl::StatusOr<std::vector<float>> ScoreLogits(Client& client, const std::string& adapter);

// Prompt token ids of a PEFT fixture case (expected.json "prompts"), e.g. "qv_r4".
std::vector<std::vector<int32_t>> FixturePrompts(const std::string& peft_case);

// A float32 tensor of a fixture case's expected.safetensors, flattened (empty if missing).
std::vector<float> FixtureTensor(const std::string& peft_case, const std::string& name);

// max(|a − b| − rtol·|b|) over the elements (infinity when the sizes differ): a value ≤ atol means
// numpy.allclose(a, b, rtol, atol).
double AllcloseExcess(const std::vector<float>& a, const std::vector<float>& b, double rtol = 1e-4);

}  // namespace loraserve::testing

#endif  // LORASERVE_TESTS_SERVER_SERVER_TEST_ENV_H_
