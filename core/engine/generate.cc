#include "core/engine/generate.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"

namespace loraserve::core {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

ContinuationDecoder::ContinuationDecoder(const Tokenizer& tokenizer,
                                         absl::Span<const int32_t> prompt_ids)
    : decoder_(tokenizer, /*skip_special_tokens=*/true) {
  std::string emitted;
  for (int32_t id : prompt_ids) emitted += decoder_.Next(id);
  std::string prompt_text = tokenizer.Decode(prompt_ids, /*skip_special_tokens=*/true);
  // StreamingDecoder's contract makes `emitted` a prefix of the prompt's text; the rest is still
  // held back inside the decoder.
  if (prompt_text.compare(0, emitted.size(), emitted) == 0) {
    pending_prompt_text_ = prompt_text.substr(emitted.size());
  }
}

std::string ContinuationDecoder::DropPromptText(std::string piece) {
  if (pending_prompt_text_.empty()) return piece;
  size_t n = 0;
  while (n < piece.size() && n < pending_prompt_text_.size() &&
         piece[n] == pending_prompt_text_[n]) {
    ++n;
  }
  if (n == piece.size()) {
    pending_prompt_text_.erase(0, n);
    return "";
  }
  if (n < pending_prompt_text_.size()) {
    // The held-back prompt text came out differently (a byte run completed by the continuation):
    // return the rest, from the last character boundary.
    while (n > 0 && (static_cast<unsigned char>(piece[n]) & 0xC0) == 0x80) --n;
  }
  pending_prompt_text_.clear();
  return piece.substr(n);
}

std::string ContinuationDecoder::Next(int32_t id) { return DropPromptText(decoder_.Next(id)); }

std::string ContinuationDecoder::Finish() { return DropPromptText(decoder_.Finish()); }

SequenceGenerator::SequenceGenerator(const ModelConfig& config, const Tokenizer& tokenizer,
                                     const std::vector<int32_t>& prompt_ids,
                                     const SamplingOptions& options)
    : options_(options),
      max_context_(config.max_position_embeddings),
      prompt_len_(static_cast<int64_t>(prompt_ids.size())),
      sampler_(options),
      stop_(options.stop),
      decoder_(tokenizer, prompt_ids) {
  if (options.stop_on_eos) {
    for (int64_t id : config.eos_token_ids) eos_.insert(static_cast<int32_t>(id));
    if (tokenizer.eos_id() >= 0) eos_.insert(tokenizer.eos_id());
  }
  result_.seed = sampler_.seed();
}

absl::Status SequenceGenerator::ValidatePrompt(const ModelConfig& config,
                                               const std::vector<int32_t>& prompt_ids) {
  const int64_t prompt_len = static_cast<int64_t>(prompt_ids.size());
  if (prompt_len == 0) return absl::InvalidArgumentError("the prompt has no tokens");
  if (prompt_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", prompt_len, " tokens, more than the model's context of ",
                     config.max_position_embeddings));
  }
  for (int32_t id : prompt_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenEvent> SequenceGenerator::Step(const at::Tensor& logits_row) {
  LORASERVE_ASSIGN_OR_RETURN(SampledToken token, sampler_.Sample(logits_row));
  TokenEvent event;
  event.id = token.id;
  event.index = static_cast<int32_t>(result_.tokens.size());
  event.logprob = token.logprob;
  event.top_logprobs = token.top_logprobs;
  result_.tokens.push_back(token.id);
  if (options_.logprobs) result_.logprobs.push_back(std::move(token));

  // Decide whether this token ends generation before streaming it, so that its event can carry
  // the held-back text.
  const bool is_eos = eos_.count(event.id) > 0;
  finished_ = true;
  if (!is_eos) event.text = stop_.Push(decoder_.Next(event.id));
  const int64_t generated = static_cast<int64_t>(result_.tokens.size());
  if (stop_.stopped()) {
    result_.finish_reason = FinishReason::kStop;
  } else if (is_eos) {
    result_.finish_reason = FinishReason::kEos;
  } else if (generated >= options_.max_new_tokens || prompt_len_ + generated >= max_context_) {
    // The next step would feed this token at position prompt_len + generated - 1; stopping when
    // prompt + generated reaches the context keeps every token within it.
    result_.finish_reason = FinishReason::kLength;
  } else {
    finished_ = false;
  }
  if (finished_ && !stop_.stopped()) {
    // Text the decoder still held back may itself complete a stop string.
    absl::StrAppend(&event.text, stop_.Push(decoder_.Finish()));
    if (stop_.stopped()) {
      result_.finish_reason = FinishReason::kStop;
    } else {
      absl::StrAppend(&event.text, stop_.Flush());
    }
  }
  if (stop_.stopped()) result_.stop_string = stop_.matched();
  absl::StrAppend(&result_.text, event.text);
  return event;
}

void SequenceGenerator::Cancel() {
  if (finished_) return;
  finished_ = true;
  result_.finish_reason = FinishReason::kCancelled;
}

absl::StatusOr<GenerationResult> Generate(const Model& model, const Tokenizer& tokenizer,
                                          const std::vector<int32_t>& prompt_ids,
                                          const SamplingOptions& options,
                                          const HooksFactory& make_hooks,
                                          std::function<bool(const TokenEvent&)> on_token) {
  LORASERVE_RETURN_IF_ERROR(ValidateSamplingOptions(options));
  LORASERVE_RETURN_IF_ERROR(SequenceGenerator::ValidatePrompt(model.config(), prompt_ids));
  c10::InferenceMode inference_mode;
  KvCache cache(model.config(), model.options());
  constexpr int64_t kSeq = 0;
  LORASERVE_RETURN_IF_ERROR(cache.AddSequence(kSeq));
  SequenceGenerator gen(model.config(), tokenizer, prompt_ids, options);
  SequenceInput input{kSeq, prompt_ids};
  while (true) {
    const auto batch = absl::MakeConstSpan(&input, 1);
    std::unique_ptr<ForwardHooks> hooks = make_hooks ? make_hooks(batch) : nullptr;
    LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits,
                               model.Forward(batch, &cache, LogitsMode::kLast, hooks.get()));
    LORASERVE_ASSIGN_OR_RETURN(at::Tensor row, CallTorch("generate", [&] { return logits[0]; }));
    LORASERVE_ASSIGN_OR_RETURN(TokenEvent event, gen.Step(row));
    if (on_token && !on_token(event)) gen.Cancel();
    if (gen.finished()) break;
    input.tokens.assign(1, event.id);
  }
  return std::move(gen.result());
}

}  // namespace loraserve::core
