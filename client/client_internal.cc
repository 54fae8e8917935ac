#include "client/client_internal.h"

#include <algorithm>
#include <map>
#include <random>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace loraserve::client_internal {

std::string ToString(const grpc::string_ref& s) { return std::string(s.data(), s.size()); }

void ReadTrailers(const grpc::ClientContext& ctx, CallInfo* info) {
  const auto& md = ctx.GetServerTrailingMetadata();
  if (auto it = md.find(kRequestIdKey); it != md.end()) info->request_id = ToString(it->second);
  if (auto it = md.find(kRetryAfterKey); it != md.end()) {
    int64_t ms = 0;
    if (absl::SimpleAtoi(ToString(it->second), &ms) && ms >= 0) {
      info->retry_after = absl::Milliseconds(ms);
    }
  }
}

AdapterInfo FromProto(const pb::Adapter& a) {
  AdapterInfo out;
  out.name = a.name();
  out.checksum = a.checksum();
  out.state = MapEnum(a.state(),
                      {{pb::ADAPTER_STATE_LOADING, AdapterState::kLoading},
                       {pb::ADAPTER_STATE_READY, AdapterState::kReady},
                       {pb::ADAPTER_STATE_MERGED, AdapterState::kMerged}},
                      AdapterState::kUnspecified);
  out.residency = MapEnum(a.residency(),
                          {{pb::RESIDENCY_RESIDENT, Residency::kResident},
                           {pb::RESIDENCY_EVICTED, Residency::kEvicted},
                           {pb::RESIDENCY_NOT_LOADED, Residency::kNotLoaded}},
                          Residency::kUnspecified);
  out.source =
      MapEnum(a.source(),
              {{pb::ADAPTER_SOURCE_ADAPTER_ROOT, AdapterSource::kAdapterRoot},
               {pb::ADAPTER_SOURCE_UPLOAD, AdapterSource::kUpload},
               {pb::ADAPTER_SOURCE_COMBINED, AdapterSource::kCombined}},
              AdapterSource::kUnspecified);
  out.path = a.path();
  out.bytes = a.bytes();
  out.max_rank = a.max_rank();
  out.ranks.assign(a.ranks().begin(), a.ranks().end());
  out.target_modules.assign(a.target_modules().begin(), a.target_modules().end());
  out.dora = a.dora();
  out.has_head = a.has_head();
  out.base_model_name_or_path = a.base_model_name_or_path();
  out.base_model_match = MapEnum(a.base_model_match(), {{pb::BASE_MODEL_MATCH_MATCH, BaseModelMatch::kMatch}, {pb::BASE_MODEL_MATCH_MISMATCH, BaseModelMatch::kMismatch}, {pb::BASE_MODEL_MATCH_UNKNOWN, BaseModelMatch::kUnknown}}, BaseModelMatch::kUnspecified);
  out.warnings.assign(a.warnings().begin(), a.warnings().end());
  out.uses = a.uses();
  return out;
}

absl::StatusOr<pb::CombinationType> CombinationToProto(const std::string& name) {
  static const auto* kTypes = new std::map<std::string, pb::CombinationType>{
      {"linear", pb::COMBINATION_TYPE_LINEAR},
      {"cat", pb::COMBINATION_TYPE_CAT},
      {"svd", pb::COMBINATION_TYPE_SVD},
      {"ties", pb::COMBINATION_TYPE_TIES},
      {"ties_svd", pb::COMBINATION_TYPE_TIES_SVD},
      {"dare_linear", pb::COMBINATION_TYPE_DARE_LINEAR},
      {"dare_ties", pb::COMBINATION_TYPE_DARE_TIES},
      {"dare_linear_svd", pb::COMBINATION_TYPE_DARE_LINEAR_SVD},
      {"dare_ties_svd", pb::COMBINATION_TYPE_DARE_TIES_SVD},
      {"magnitude_prune", pb::COMBINATION_TYPE_MAGNITUDE_PRUNE},
      {"magnitude_prune_svd", pb::COMBINATION_TYPE_MAGNITUDE_PRUNE_SVD},
  };
  auto it = kTypes->find(name);
  if (it == kTypes->end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown combination type \"", name, "\""));
  }
  return it->second;
}

GeneratedToken TokenFromProto(const pb::GeneratedToken& t) {
  GeneratedToken out;
  out.id = t.id();
  out.index = t.index();
  out.text = t.text();
  out.logprob = t.logprob();
  for (const auto& tl : t.top_logprobs()) out.top_logprobs.push_back({tl.id(), tl.logprob()});
  return out;
}

absl::Status LocalFileError(const absl::Status& s) {
  if (s.ok() || s.code() == absl::StatusCode::kInvalidArgument) return s;
  return absl::InvalidArgumentError(s.message());
}

bool Retryable(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kUnavailable) return true;
  return s.code() == absl::StatusCode::kResourceExhausted && RetryAfterOf(s).has_value();
}

absl::Duration Backoff(const RetryPolicy& policy, int retry, std::optional<absl::Duration> server) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  if (server.has_value()) {
    return *server * std::uniform_real_distribution<double>(1.0, 1.0 + jitter)(rng);
  }
  absl::Duration d = policy.initial_backoff;
  for (int i = 1; i < retry && d < policy.max_backoff; ++i) d = d * policy.multiplier;
  d = std::min(d, policy.max_backoff);
  return d * std::uniform_real_distribution<double>(1.0 - jitter, 1.0 + jitter)(rng);
}

}  // namespace loraserve::client_internal
