#include "server/proto_convert.h"

#include <cctype>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace loraserve::server {
namespace {

constexpr int kMaxCombineSources = 16;

absl::StatusOr<core::CombinationType> CombinationFromProto(pb::CombinationType t) {
  switch (t) {
    case pb::COMBINATION_TYPE_UNSPECIFIED:
    case pb::COMBINATION_TYPE_SVD: return core::CombinationType::kSvd;
    case pb::COMBINATION_TYPE_LINEAR: return core::CombinationType::kLinear;
    case pb::COMBINATION_TYPE_CAT: return core::CombinationType::kCat;
    case pb::COMBINATION_TYPE_TIES: return core::CombinationType::kTies;
    case pb::COMBINATION_TYPE_TIES_SVD: return core::CombinationType::kTiesSvd;
    case pb::COMBINATION_TYPE_DARE_LINEAR: return core::CombinationType::kDareLinear;
    case pb::COMBINATION_TYPE_DARE_TIES: return core::CombinationType::kDareTies;
    case pb::COMBINATION_TYPE_DARE_LINEAR_SVD: return core::CombinationType::kDareLinearSvd;
    case pb::COMBINATION_TYPE_DARE_TIES_SVD: return core::CombinationType::kDareTiesSvd;
    case pb::COMBINATION_TYPE_MAGNITUDE_PRUNE: return core::CombinationType::kMagnitudePrune;
    case pb::COMBINATION_TYPE_MAGNITUDE_PRUNE_SVD: return core::CombinationType::kMagnitudePruneSvd;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat("combination_type: unknown value ", static_cast<int>(t)));
}

std::string LastComponent(std::string path) {
  while (!path.empty() && path.back() == '/') path.pop_back();
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

absl::Status ValidateAdapterName(absl::string_view name, absl::string_view field, bool allow_empty) {
  if (name.empty() && allow_empty) return absl::OkStatus();
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": adapter name must be 1 to 128 characters"));
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": adapter name may only contain [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

std::optional<std::string> RelativeTo(const std::string& path, const std::string& root) {
  if (root.empty() || path.compare(0, root.size(), root) != 0) return std::nullopt;
  if (path.size() == root.size()) return std::string();
  if (root.back() == '/') return path.substr(root.size());
  if (path[root.size()] != '/') return std::nullopt;
  return path.substr(root.size() + 1);
}

pb::Adapter AdapterToProto(const core::AdapterInfo& info,
                           const std::optional<AdapterProvenance>& provenance,
                           const std::string& adapter_root, const std::string& model_name) {
  pb::Adapter a;
  a.set_name(info.name);
  a.set_state(info.pinned ? pb::ADAPTER_STATE_MERGED : pb::ADAPTER_STATE_READY);
  a.set_residency(info.resident          ? pb::RESIDENCY_RESIDENT
                  : info.registered_only ? pb::RESIDENCY_NOT_LOADED
                                         : pb::RESIDENCY_EVICTED);
  AdapterOrigin origin = provenance ? provenance->origin : AdapterOrigin::kUnknown;
  std::string rel = provenance ? provenance->relative_path : std::string();
  if (origin == AdapterOrigin::kUnknown) {
    if (auto r = RelativeTo(info.source_dir, adapter_root)) {
      origin = AdapterOrigin::kAdapterRoot;
      rel = *r;
    }
  }
  switch (origin) {
    case AdapterOrigin::kAdapterRoot:
      a.set_source(pb::ADAPTER_SOURCE_ADAPTER_ROOT);
      a.set_path(rel);
      break;
    case AdapterOrigin::kUpload: a.set_source(pb::ADAPTER_SOURCE_UPLOAD); break;
    case AdapterOrigin::kCombined: a.set_source(pb::ADAPTER_SOURCE_COMBINED); break;
    case AdapterOrigin::kUnknown: a.set_source(pb::ADAPTER_SOURCE_UNSPECIFIED); break;
  }
  a.set_bytes(info.resident ? info.bytes : 0);
  a.set_max_rank(info.max_rank);
  for (int64_t r : info.ranks) a.add_ranks(r);
  for (const auto& m : info.target_modules) a.add_target_modules(m);
  a.set_dora(info.dora);
  a.set_has_head(info.has_head);
  a.set_base_model_name_or_path(info.base_model_name_or_path);
  if (info.base_model_name_or_path.empty()) {
    a.set_base_model_match(pb::BASE_MODEL_MATCH_UNKNOWN);
  } else {
    // The same rule as the adapter loader's warning: compare the last path components.
    a.set_base_model_match(LastComponent(info.base_model_name_or_path) == model_name
                               ? pb::BASE_MODEL_MATCH_MATCH
                               : pb::BASE_MODEL_MATCH_MISMATCH);
  }
  for (const auto& w : info.warnings) a.add_warnings(w);
  a.set_uses(info.uses);
  if (provenance) a.set_checksum(provenance->checksum);
  return a;
}

pb::Adapter LoadingAdapterToProto(const std::string& name) {
  pb::Adapter a;
  a.set_name(name);
  a.set_state(pb::ADAPTER_STATE_LOADING);
  return a;
}

absl::StatusOr<core::SamplingOptions> SamplingFromProto(const pb::SamplingOptions& p) {
  core::SamplingOptions o;
  if (p.has_temperature()) o.temperature = p.temperature();
  o.top_k = p.top_k();
  if (p.has_top_p()) o.top_p = p.top_p();
  if (p.has_seed()) o.seed = p.seed();
  if (p.max_new_tokens() < 0) {
    return absl::InvalidArgumentError("sampling.max_new_tokens must be >= 0 (0 = 128)");
  }
  if (p.max_new_tokens() > 0) o.max_new_tokens = p.max_new_tokens();
  o.stop.assign(p.stop().begin(), p.stop().end());
  o.stop_on_eos = !p.ignore_eos();
  o.logprobs = p.logprobs();
  o.top_logprobs = p.top_logprobs();
  absl::Status s = core::ValidateSamplingOptions(o);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("sampling: ", s.message()));
  return o;
}

absl::Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocab_size,
                              absl::string_view field) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", ids[i],
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<core::SamplingOptions> ValidateGenerateRequest(const pb::GenerateRequest& request, int64_t vocab_size) {
  LORASERVE_ASSIGN_OR_RETURN(core::SamplingOptions sampling, SamplingFromProto(request.sampling()));
  if (request.text().empty() == (request.token_ids_size() == 0)) {
    return absl::InvalidArgumentError("exactly one of text and token_ids must be set");
  }
  LORASERVE_RETURN_IF_ERROR(ValidateTokenIds(request.token_ids(), vocab_size, "token_ids"));
  return sampling;
}

namespace {

// Upper bound of a ScoreResponse's encoded size for `n` tokens (proto varint and tag overheads
// rounded up).
int64_t ScoreReplyBytes(int64_t n, int64_t vocab, bool full_logits, int64_t top) {
  int64_t bytes = 64 + 4 * n;                    // header fields, token_logprobs
  if (full_logits) bytes += 4 * n * vocab + 16;  // packed float32 logits
  bytes += n * (4 + top * 16);                   // top_logprobs entries
  return bytes;
}

}  // namespace

absl::Status ValidateScoreRequest(const pb::ScoreRequest& request, int64_t vocab_size, int64_t max_context,
                                  int64_t max_message_bytes) {
  const int64_t n = request.token_ids_size();
  if (n == 0) return absl::InvalidArgumentError("token_ids is empty");
  if (n > max_context) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids has ", n, " tokens, the model's context is ", max_context));
  }
  if (request.top_logprobs() < 0 || request.top_logprobs() > core::kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ", core::kMaxTopLogprobs, "]"));
  }
  LORASERVE_RETURN_IF_ERROR(ValidateTokenIds(request.token_ids(), vocab_size, "token_ids"));
  const int64_t bytes = ScoreReplyBytes(n, vocab_size, request.full_logits(), request.top_logprobs());
  if (bytes > max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the reply (about ", bytes, " bytes for ", n, " tokens",
        request.full_logits() ? absl::StrCat(" x ", vocab_size, " float32 logits") : "",
        ") would exceed the server's max message size of ", max_message_bytes,
        " bytes; ask for top_logprobs instead of full_logits, or score fewer tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<core::CombineOptions> CombineOptionsFromProto(const pb::CombineAdaptersRequest& r) {
  core::CombineOptions o;
  if (r.sources_size() == 0 || r.sources_size() > kMaxCombineSources) {
    return absl::InvalidArgumentError(
        absl::StrCat("sources: 1 to ", kMaxCombineSources, " adapters, got ", r.sources_size()));
  }
  for (const auto& s : r.sources()) {
    if (!std::isfinite(s.weight())) {
      return absl::InvalidArgumentError(absl::StrCat("sources: weight of ", s.name(), " is not finite"));
    }
    o.weights.push_back(s.weight());
  }
  auto type = CombinationFromProto(r.combination_type());
  if (!type.ok()) return type.status();
  o.type = *type;
  if (r.svd_rank() < 0) return absl::InvalidArgumentError("svd_rank must be >= 0");
  o.svd_rank = r.svd_rank();
  if (!(r.svd_clamp() >= 0 && r.svd_clamp() < 1)) {
    return absl::InvalidArgumentError("svd_clamp must be in [0, 1) (0 = no clamping)");
  }
  o.svd_clamp = r.svd_clamp();
  if (r.has_density()) {
    if (!(r.density() > 0 && r.density() <= 1)) {
      return absl::InvalidArgumentError("density must be in (0, 1]");
    }
    o.density = r.density();
  }
  switch (r.majority_sign_method()) {
    case pb::MAJORITY_SIGN_METHOD_UNSPECIFIED:
    case pb::MAJORITY_SIGN_METHOD_TOTAL: o.majority_sign_method = "total"; break;
    case pb::MAJORITY_SIGN_METHOD_FREQUENCY: o.majority_sign_method = "frequency"; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("majority_sign_method: unknown value ",
                                                     static_cast<int>(r.majority_sign_method())));
  }
  o.seed = r.seed();
  return o;
}

pb::FinishReason FinishReasonToProto(core::FinishReason reason) {
  switch (reason) {
    case core::FinishReason::kLength: return pb::FINISH_REASON_LENGTH;
    case core::FinishReason::kEos: return pb::FINISH_REASON_EOS;
    case core::FinishReason::kStop: return pb::FINISH_REASON_STOP;
    case core::FinishReason::kCancelled: break;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}

void TokenEventToProto(const core::TokenEvent& e, bool logprobs, pb::GeneratedToken* out) {
  out->set_id(e.id);
  out->set_index(e.index);
  out->set_text(e.text);
  if (logprobs) out->set_logprob(e.logprob);
  for (const auto& t : e.top_logprobs) {
    pb::TokenLogprob* p = out->add_top_logprobs();
    p->set_id(t.id);
    p->set_logprob(t.logprob);
  }
}

void ScoreResultToProto(const core::ScoreResult& r, pb::ScoreResponse* out) {
  out->set_num_tokens(r.num_tokens);
  out->set_vocab_size(r.vocab_size);
  out->mutable_logits()->Assign(r.logits.begin(), r.logits.end());
  out->mutable_token_logprobs()->Assign(r.token_logprobs.begin(), r.token_logprobs.end());
  for (const auto& position : r.top) {
    pb::PositionTopLogprobs* p = out->add_top_logprobs();
    for (const auto& t : position) {
      pb::TokenLogprob* tl = p->add_top();
      tl->set_id(t.id);
      tl->set_logprob(t.logprob);
    }
  }
}

}  // namespace loraserve::server
