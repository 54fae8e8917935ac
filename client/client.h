// loraserve::Client: the C++ client library for a loraserve server. Hides channels and stubs;
// every call returns absl::Status / absl::StatusOr with plain structs (no protobuf types).
//
// Errors carry the server's gRPC status code and message. When the server sent them, the request
// id and a retry delay are attached to an error status as payloads: read them with
// RequestIdOf(status) and RetryAfterOf(status), or pass a CallInfo in CallOptions to get them for
// successful calls too.
//
// Thread-safe: one Client may be shared by many threads.
#ifndef LORASERVE_CLIENT_CLIENT_H_
#define LORASERVE_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace loraserve {

// When and how a failed call is tried again. Only idempotent calls are retried: Health,
// GetAdapter, ListAdapters, Score, Tokenize, Detokenize, Generate with a seed before its first
// token arrived, and LoadAdapter / UploadAdapter (the server answers OK for a name already loaded
// with the same content checksum). They are retried on UNAVAILABLE, and on RESOURCE_EXHAUSTED
// when the server attached a retry delay (`retry-after-ms` trailing metadata, a full queue).
// Never retried: DeleteAdapter, MergeAdapter, UnmergeAdapter, UnloadAll, CombineAdapters,
// SaveAdapter, ExportMergedModel, unseeded Generate, and any Generate after a token arrived.
struct RetryPolicy {
  // Attempts in all, the first included; 1 = never retry.
  int max_attempts = 4;
  // Delay before the first retry; multiplied by `multiplier` for each further one, capped at
  // `max_backoff`. Each delay is then drawn uniformly from [delay·(1−jitter), delay·(1+jitter)].
  // A server's retry delay replaces the computed one (jitter still applies, upwards only).
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  double multiplier = 2.0;
  double jitter = 0.2;
};

struct TlsOptions {
  // Use TLS. With no root certificates given, the system's trust store is used.
  bool enabled = false;
  // PEM root certificate(s) to verify the server with (the contents, not a path).
  std::string root_certs_pem;
  // PEM client certificate chain and private key for mutual TLS (both or neither).
  std::string client_cert_pem;
  std::string client_key_pem;
  // Expected name in the server's certificate when it differs from the address's host.
  std::string server_name_override;
};

struct ClientOptions {
  // host:port of the server.
  std::string address = "127.0.0.1:50051";
  // Deadline of each call that does not set CallOptions::timeout (streams included: a long
  // generation needs a longer one). Retries happen within the same deadline.
  absl::Duration default_deadline = absl::Seconds(30);
  // Largest reply accepted, in bytes (full-logit Score replies can be large).
  int64_t max_receive_message_bytes = 256ll << 20;
  // Chunk size for UploadAdapter, in bytes.
  int64_t upload_chunk_bytes = 1 << 20;
  RetryPolicy retry;
  TlsOptions tls;
  // Sent as `authorization: Bearer <token>` with every call when not empty (printable ASCII, no
  // spaces).
  std::string bearer_token;
};

// What the server told about one call (trailing metadata).
struct CallInfo {
  std::string request_id;
  // Set when the server asked the caller to wait before retrying (full queue).
  std::optional<absl::Duration> retry_after;
  // Attempts made (1 = no retry).
  int attempts = 0;
};

struct CallOptions {
  // 0 = ClientOptions::default_deadline.
  absl::Duration timeout = absl::ZeroDuration();
  // Sent as `x-request-id` (1 to 128 characters of [A-Za-z0-9._:-]); empty = the server makes one.
  std::string request_id;
  // If set, filled when the call ends (success or error); about the last attempt.
  CallInfo* info = nullptr;
  // 0 = ClientOptions::retry.max_attempts; 1 = no retry for this call.
  int max_attempts = 0;
};

// Progress of a file transfer (UploadAdapter, SaveAdapter, ExportMergedModel).
struct TransferProgress {
  std::string path;         // the file being transferred
  int64_t bytes_done = 0;   // over all files so far
  int64_t total_bytes = 0;  // over all files
  int files_done = 0;
};
// Called after each chunk, from the calling thread.
using ProgressCallback = std::function<void(const TransferProgress& progress)>;

// The request id / retry delay the server attached to a failed call ("" / nullopt if none).
std::string RequestIdOf(const absl::Status& status);
std::optional<absl::Duration> RetryAfterOf(const absl::Status& status);

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
const char* ServingStatusName(ServingStatus status);

// ---- Adapters ---------------------------------------------------------------------------------

enum class AdapterState { kUnspecified, kLoading, kReady, kMerged };
enum class Residency { kUnspecified, kResident, kEvicted, kNotLoaded };
enum class AdapterSource { kUnspecified, kAdapterRoot, kUpload, kCombined };
enum class BaseModelMatch { kUnspecified, kMatch, kMismatch, kUnknown };
// "loading", "ready", "merged", ...; "resident", "evicted"; "adapter_root", "upload", "combined";
// "match", "mismatch", "unknown". "unspecified" otherwise.
const char* AdapterStateName(AdapterState state);
const char* ResidencyName(Residency residency);
const char* AdapterSourceName(AdapterSource source);
const char* BaseModelMatchName(BaseModelMatch match);

struct AdapterInfo {
  std::string name;
  // SHA-256 identity of the adapter's files (see the proto); "" for combined adapters.
  std::string checksum;
  AdapterState state = AdapterState::kUnspecified;
  Residency residency = Residency::kUnspecified;
  AdapterSource source = AdapterSource::kUnspecified;
  std::string path;  // kAdapterRoot: relative to the server's adapter root
  int64_t bytes = 0;
  int64_t max_rank = 0;
  std::vector<int64_t> ranks;  // per target module
  std::vector<std::string> target_modules;
  bool dora = false;
  bool has_head = false;
  std::string base_model_name_or_path;
  BaseModelMatch base_model_match = BaseModelMatch::kUnspecified;
  std::vector<std::string> warnings;
  int64_t uses = 0;
  // Load/Upload only: the name was already loaded with the same checksum (nothing changed).
  bool already_loaded = false;
};

struct MergeResult {
  bool already_merged = false;
  AdapterInfo adapter;
};

struct WeightedAdapter {
  std::string name;
  double weight = 1.0;
};

// PEFT add_weighted_adapter.
struct CombineRequest {
  std::string name;                      // the new adapter
  std::vector<WeightedAdapter> sources;  // 1 to 16
  // "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
  // "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd".
  std::string combination_type = "svd";
  int64_t svd_rank = 0;    // 0 = the largest source rank
  double svd_clamp = 0;    // 0 = none, else a quantile in (0, 1)
  double density = 1.0;    // (0, 1]
  std::string majority_sign_method = "total";  // or "frequency"
  uint64_t seed = 0;
};

// A file written by SaveAdapter / ExportMergedModel (its SHA-256 verified).
struct TransferredFile {
  std::string path;  // relative to the output directory
  int64_t size = 0;
  std::string sha256;
};

// ---- Inference --------------------------------------------------------------------------------

struct SamplingParams {
  std::optional<double> temperature;  // unset = 1; 0 = greedy
  int32_t top_k = 0;                  // 0 = off
  std::optional<double> top_p;        // unset = 1 (off)
  std::optional<uint64_t> seed;       // unset = drawn by the server (reported back)
  int32_t max_new_tokens = 0;         // 0 = 128
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool logprobs = false;
  int32_t top_logprobs = 0;
};

struct GenerateRequest {
  std::string adapter;              // "" = base model
  std::string text;                 // exactly one of text / token_ids
  std::vector<int32_t> token_ids;
  SamplingParams sampling;
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

struct GeneratedToken {
  int32_t id = 0;
  int32_t index = 0;
  std::string text;
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
};

enum class FinishReason { kUnspecified, kLength, kEos, kStop };
const char* FinishReasonName(FinishReason reason);

struct GenerateResult {
  std::vector<GeneratedToken> tokens;
  std::string text;  // the tokens' texts concatenated
  FinishReason finish_reason = FinishReason::kUnspecified;
  std::string stop_string;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  uint64_t seed = 0;
  double queue_time_ms = 0;
  double time_to_first_token_ms = 0;
};

// Called for each token as it arrives; return false to cancel the generation (Generate then
// returns Cancelled).
using TokenCallback = std::function<bool(const GeneratedToken& token)>;

// The iterator form of a streaming Generate: Client::StartGenerate. Not thread-safe (one reader);
// destroying it before the end cancels the generation.
class GenerateStream {
 public:
  virtual ~GenerateStream() = default;
  // The next token; false when the stream has ended (then call Finish()).
  virtual bool Next(GeneratedToken* token) = 0;
  // The final status and the summary (`tokens` and `text` hold what Next returned). Cancelled if
  // Cancel() was called. Call once, after Next returned false or after Cancel().
  virtual absl::StatusOr<GenerateResult> Finish() = 0;
  // Stops the generation; thread-safe.
  virtual void Cancel() = 0;
};

struct ScoreRequest {
  std::string adapter;  // "" = base model
  std::vector<int32_t> token_ids;
  bool full_logits = false;
  int32_t top_logprobs = 0;
};

struct ScoreResult {
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;
  std::vector<float> logits;          // full_logits: [num_tokens * vocab_size], row-major
  std::vector<float> token_logprobs;  // [num_tokens - 1]
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // [num_tokens] when requested
};

class Client {
 public:
  // Creates a client; the connection is made lazily on the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();

  // grpc.health.v1 Check for `service` ("" = the whole server). UNAVAILABLE if unreachable.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "",
                                       const CallOptions& call = {});

  // --- AdapterService (error codes: see proto/loraserve/v1/adapter_service.proto) ---
  // `path` is relative to the server's adapter root.
  absl::StatusOr<AdapterInfo> LoadAdapter(const std::string& name, const std::string& path,
                                          const CallOptions& call = {});
  // LoadAdapter with register_only: read, checksummed and validated, weights not kept (residency
  // kNotLoaded); the first request naming it loads them on the server's loader threads.
  absl::StatusOr<AdapterInfo> RegisterAdapter(const std::string& name, const std::string& path,
                                              const CallOptions& call = {});
  // Sends every regular file below the local directory `dir` (with SHA-256s) and loads them.
  // InvalidArgument locally if `dir` has no files, too many, or untransferable names.
  absl::StatusOr<AdapterInfo> UploadAdapter(const std::string& name, const std::string& dir,
                                            const CallOptions& call = {},
                                            const ProgressCallback& progress = nullptr);
  absl::StatusOr<AdapterInfo> GetAdapter(const std::string& name, const CallOptions& call = {});
  absl::StatusOr<std::vector<AdapterInfo>> ListAdapters(const CallOptions& call = {});
  absl::Status DeleteAdapter(const std::string& name, const CallOptions& call = {});
  absl::StatusOr<MergeResult> MergeAdapter(const std::string& name, const CallOptions& call = {});
  absl::StatusOr<AdapterInfo> UnmergeAdapter(const std::string& name, const CallOptions& call = {});
  // Returns the number of adapters deleted.
  absl::StatusOr<int> UnloadAll(const CallOptions& call = {});
  absl::StatusOr<AdapterInfo> CombineAdapters(const CombineRequest& request,
                                              const CallOptions& call = {});
  // Write the streamed files into the local directory `out_dir` (created if missing; existing
  // files of the same names are replaced). DataLoss if a file's SHA-256 does not match.
  absl::StatusOr<std::vector<TransferredFile>> SaveAdapter(
      const std::string& name, const std::string& out_dir, const CallOptions& call = {},
      const ProgressCallback& progress = nullptr);
  absl::StatusOr<std::vector<TransferredFile>> ExportMergedModel(
      const std::vector<std::string>& adapters, const std::string& out_dir,
      const CallOptions& call = {}, const ProgressCallback& progress = nullptr);

  // --- InferenceService ---
  // Streams tokens to `on_token` (optional) as they are generated; returns the whole result.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request,
                                          const TokenCallback& on_token = nullptr,
                                          const CallOptions& call = {});
  // The iterator form: starts the call and returns at once (errors surface in Next/Finish).
  std::unique_ptr<GenerateStream> StartGenerate(const GenerateRequest& request,
                                                const CallOptions& call = {});
  absl::StatusOr<ScoreResult> Score(const ScoreRequest& request, const CallOptions& call = {});
  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text, bool add_special_tokens,
                                                bool parse_special = false,
                                                const CallOptions& call = {});
  absl::StatusOr<std::string> Detokenize(const std::vector<int32_t>& token_ids,
                                         bool skip_special_tokens = false,
                                         const CallOptions& call = {});
  // The text of each id decoded on its own (one call), e.g. for per-token tables.
  absl::StatusOr<std::vector<std::string>> TokenTexts(const std::vector<int32_t>& token_ids,
                                                      const CallOptions& call = {});

  struct Impl;  // opaque

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  absl::StatusOr<AdapterInfo> LoadOrRegister(const std::string& name, const std::string& path,
                                             bool register_only, const CallOptions& call);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loraserve

#endif  // LORASERVE_CLIENT_CLIENT_H_
