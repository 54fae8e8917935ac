// Conversions between the loraserve.v1 messages and the core types, with the request validation
// that belongs to the wire format (field ranges, names). Pure functions; thread-safe.
#ifndef LORASERVE_SERVER_PROTO_CONVERT_H_
#define LORASERVE_SERVER_PROTO_CONVERT_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/engine/engine.h"
#include "core/lora/adapter_types.h"
#include "core/model/generation_types.h"
#include "loraserve/v1/adapter_service.pb.h"
#include "loraserve/v1/inference_service.pb.h"
#include "server/adapter_book.h"

namespace loraserve::server {

namespace pb = ::loraserve::v1;

// InvalidArgument unless `name` is 1 to 128 characters of [A-Za-z0-9._-] (or empty when
// `allow_empty`, meaning the base model). `field` names the request field in the message.
absl::Status ValidateAdapterName(absl::string_view name, absl::string_view field,
                                 bool allow_empty = false);

// The wire description of an adapter. `provenance` is what the book recorded (if anything);
// without it an adapter whose source directory lies below `adapter_root` is reported as loaded
// from there. `model_name` is the served model's name (base-model match).
pb::Adapter AdapterToProto(const core::AdapterInfo& info,
                           const std::optional<AdapterProvenance>& provenance,
                           const std::string& adapter_root, const std::string& model_name);
pb::Adapter LoadingAdapterToProto(const std::string& name);

// Applies the wire defaults (temperature 1, top_p 1, max_new_tokens 128) and validates with
// core::ValidateSamplingOptions. InvalidArgument naming the field otherwise.
absl::StatusOr<core::SamplingOptions> SamplingFromProto(const pb::SamplingOptions& options);

// InvalidArgument naming `field` and the index when an id is outside [0, vocab_size).
absl::Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocab_size,
                              absl::string_view field);
// Generate's checks that need no engine call: the sampling options (SamplingFromProto), exactly one
// of text and token_ids, token ids inside the vocabulary.
absl::StatusOr<core::SamplingOptions> ValidateGenerateRequest(const pb::GenerateRequest& request, int64_t vocab_size);
// Score's: token ids present, within the context and the vocabulary, top_logprobs in range, and a
// reply that fits `max_message_bytes`.
absl::Status ValidateScoreRequest(const pb::ScoreRequest& request, int64_t vocab_size, int64_t max_context,
                                  int64_t max_message_bytes);

// InvalidArgument for an unknown combination type or sign method, weights that are not finite,
// density outside (0, 1], svd_clamp outside [0, 1), negative svd_rank, no sources or more than 16.
absl::StatusOr<core::CombineOptions> CombineOptionsFromProto(const pb::CombineAdaptersRequest& request);

pb::FinishReason FinishReasonToProto(core::FinishReason reason);
void TokenEventToProto(const core::TokenEvent& event, bool logprobs, pb::GeneratedToken* out);
void ScoreResultToProto(const core::ScoreResult& result, pb::ScoreResponse* out);

// `path` relative to `root` when it is `root` itself or lies below it ("" for root itself);
// nullopt otherwise. Both absolute and normalized.
std::optional<std::string> RelativeTo(const std::string& path, const std::string& root);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_PROTO_CONVERT_H_
