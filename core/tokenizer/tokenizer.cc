// The public Tokenizer and StreamingDecoder: Tokenizer::Impl assembles the stages (normalizer,
// pre-tokenizer, BPE model, added tokens, post-processor, decoder; each in its own file of
// core/tokenizer) from one tokenizer.json and runs them in HF's order.
#include "core/tokenizer/tokenizer.h"

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/tokenizer/added_tokens.h"
#include "core/tokenizer/bpe_model.h"
#include "core/tokenizer/decoder.h"
#include "core/tokenizer/normalizer.h"
#include "core/tokenizer/post_processor.h"
#include "core/tokenizer/pre_tokenizer.h"
#include "core/tokenizer/tokenizer_json.h"
#include "core/tokenizer/utf8.h"

namespace loraserve::core {

using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::AppendLossyUtf8;
using tokenizer_internal::AV;
using tokenizer_internal::BpeModel;
using tokenizer_internal::DecodeStep;
using tokenizer_internal::DecodeStepState;
using tokenizer_internal::InitialDecodeStates;
using tokenizer_internal::IsValidUtf8;
using tokenizer_internal::JsonReader;
using tokenizer_internal::Normalize;
using tokenizer_internal::NormalizerStep;
using tokenizer_internal::ParseBpeModel;
using tokenizer_internal::ParseDecoder;
using tokenizer_internal::ParseNormalizer;
using tokenizer_internal::ParsePostProcessor;
using tokenizer_internal::ParsePreTokenizer;
using tokenizer_internal::Piece;
using tokenizer_internal::PostProcessor;
using tokenizer_internal::PreTokenizerStep;
using tokenizer_internal::RunDecodeChain;
using tokenizer_internal::RunPreTokenizerStep;

struct Tokenizer::Impl {
  BpeModel model;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecodeStep> decoder;
  PostProcessor post_processor;

  std::vector<AddedToken> added_tokens;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, size_t> added_by_id;   // -> index in added_tokens
  std::unordered_set<std::string> special_contents;  // HF skips special tokens by content.
  AddedTokenMatcher raw_matcher;         // normalized=false: matched before normalization.
  AddedTokenMatcher normalized_matcher;  // normalized=true: matched in normalized text.

  int32_t bos_id = -1, eos_id = -1;
  int32_t vocab_size = 0;

  // The token string decoding starts from, nullopt for unknown ids or skipped special tokens.
  const std::string* TokenForDecode(int32_t id, bool skip_special_tokens) const {
    const std::string* token = nullptr;
    if (const auto it = added_by_id.find(id); it != added_by_id.end()) {
      token = &added_tokens[it->second].content;
    } else if (id >= 0 && static_cast<size_t>(id) < model.has_id.size() && model.has_id[id]) {
      token = &model.id_to_token[id];
    }
    if (token != nullptr && skip_special_tokens && special_contents.count(*token) > 0) {
      return nullptr;
    }
    return token;
  }

  void EncodeText(std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
    std::vector<Piece> pieces;
    pieces.push_back({std::string(text), at_start});
    for (const PreTokenizerStep& step : pre_tokenizer) RunPreTokenizerStep(step, &pieces);
    for (const Piece& p : pieces) model.Tokenize(p.text, ids);
  }

  // The first of `names` that is a special added token.
  std::optional<int32_t> FindSpecialByName(std::initializer_list<std::string_view> names) const {
    for (const std::string_view name : names) {
      const auto it = added_by_content.find(std::string(name));
      if (it != added_by_content.end() && special_contents.count(std::string(name)) > 0) {
        return it->second;
      }
    }
    return std::nullopt;
  }

  static absl::StatusOr<std::unique_ptr<Impl>> Build(const Json& j, const JsonReader& r,
                                                     const TokenizerOptions& options);
};

absl::StatusOr<std::unique_ptr<Tokenizer::Impl>> Tokenizer::Impl::Build(
    const Json& j, const JsonReader& r, const TokenizerOptions& options) {
  if (!j.is_object()) return r.Error("top level", "must be a JSON object");
  auto impl = std::make_unique<Impl>();

  const Json* model = JsonReader::Find(j, "model");
  if (model == nullptr || !model->is_object()) return r.Error("model", "missing \"model\" object");
  std::string model_type;
  if (JsonReader::Find(*model, "type") != nullptr) {
    LORASERVE_ASSIGN_OR_RETURN(model_type, r.String(*model, "type", "model", {}));
  } else if (JsonReader::Find(*model, "merges") != nullptr) {
    model_type = "BPE";  // Old files may omit the tag.
  }
  if (model_type != "BPE") {
    return r.Error("model", absl::StrCat("unsupported model type \"", model_type,
                                         "\" (only BPE is supported)"));
  }
  LORASERVE_RETURN_IF_ERROR(ParseBpeModel(r, *model, &impl->model));

  if (const Json* n = JsonReader::Find(j, "normalizer")) {
    LORASERVE_RETURN_IF_ERROR(ParseNormalizer(r, *n, &impl->normalizer));
  }
  if (const Json* p = JsonReader::Find(j, "pre_tokenizer")) {
    LORASERVE_RETURN_IF_ERROR(ParsePreTokenizer(r, *p, &impl->pre_tokenizer));
  }
  if (const Json* d = JsonReader::Find(j, "decoder")) {
    bool fused = false;
    LORASERVE_RETURN_IF_ERROR(ParseDecoder(r, *d, &impl->decoder, &fused));
  } else {
    DecodeStep join;
    join.kind = DecodeStep::Kind::kJoinWithSpace;
    impl->decoder.push_back(std::move(join));
  }

  int32_t max_id = static_cast<int32_t>(impl->model.id_to_token.size()) - 1;
  if (const Json* added = JsonReader::Find(j, "added_tokens")) {
    if (!added->is_array()) return r.Error("added_tokens", "must be an array");
    for (const Json& a : *added) {
      AddedToken t;
      LORASERVE_ASSIGN_OR_RETURN(const int64_t id, r.Int(a, "id", "added_tokens", {}));
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
        return r.Error("added_tokens", "id out of range");
      }
      t.id = static_cast<int32_t>(id);
      LORASERVE_ASSIGN_OR_RETURN(t.content, r.String(a, "content", "added_tokens", {}));
      // HF gives an added token that is also in the model vocabulary the vocabulary's id (and only
      // warns when the file says otherwise).
      if (const auto it = impl->model.vocab.find(t.content); it != impl->model.vocab.end()) {
        t.id = it->second;
      }
      LORASERVE_ASSIGN_OR_RETURN(t.special, r.Bool(a, "special", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.lstrip, r.Bool(a, "lstrip", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.rstrip, r.Bool(a, "rstrip", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.single_word, r.Bool(a, "single_word", "added_tokens", false));
      LORASERVE_ASSIGN_OR_RETURN(t.normalized, r.Bool(a, "normalized", "added_tokens", !t.special));
      max_id = std::max(max_id, t.id);
      impl->added_by_content[t.content] = t.id;
      impl->added_by_id[t.id] = impl->added_tokens.size();
      if (t.special) impl->special_contents.insert(t.content);
      impl->added_tokens.push_back(std::move(t));
    }
  }
  for (const AddedToken& t : impl->added_tokens) {
    if (t.normalized && !impl->normalizer.empty()) {
      // HF looks for normalized tokens by their normalized content in the normalized text.
      std::string content = t.content;
      Normalize(impl->normalizer, &content);
      impl->normalized_matcher.Add(t, std::move(content));
    } else if (t.normalized) {
      impl->normalized_matcher.Add(t, t.content);
    } else {
      impl->raw_matcher.Add(t, t.content);
    }
  }
  impl->raw_matcher.Finish();
  impl->normalized_matcher.Finish();
  impl->vocab_size = max_id + 1;

  if (const Json* p = JsonReader::Find(j, "post_processor")) {
    LORASERVE_RETURN_IF_ERROR(ParsePostProcessor(r, *p, &impl->post_processor));
  }

  if (options.bos_id) {
    impl->bos_id = *options.bos_id;
  } else if (!impl->post_processor.prefix.empty()) {
    impl->bos_id = impl->post_processor.prefix.front();
  } else {
    impl->bos_id = impl->FindSpecialByName({"<s>", "<|begin_of_text|>", "<bos>"}).value_or(-1);
  }
  if (options.eos_id) {
    impl->eos_id = *options.eos_id;
  } else if (!impl->post_processor.suffix.empty()) {
    impl->eos_id = impl->post_processor.suffix.back();
  } else {
    impl->eos_id =
        impl->FindSpecialByName({"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"}).value_or(-1);
  }
  return impl;
}

Tokenizer::Tokenizer(std::unique_ptr<const Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path,
                                                               const TokenizerOptions& options) {
  LORASERVE_ASSIGN_OR_RETURN(const Json j, ReadJsonFile(path));
  return FromJson(j, path, options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const Json& json,
                                                               std::string_view source,
                                                               const TokenizerOptions& options) {
  const JsonReader reader(source);
  try {
    LORASERVE_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Build(json, reader, options));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  } catch (const std::exception& e) {
    // The parsers check types before reading, so this is a backstop for anything they missed.
    return absl::InvalidArgumentError(
        absl::StrCat(AV(source), ": malformed tokenizer: ", e.what()));
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  const Impl& im = *impl_;
  std::string lossy;
  if (!IsValidUtf8(text)) {
    AppendLossyUtf8(text, /*final=*/true, &lossy);
    text = lossy;
  }
  std::vector<int32_t> ids;
  if (options.add_special_tokens) ids = im.post_processor.prefix;

  // 1. Added tokens that are not normalized are cut out of the raw text.
  std::vector<AddedTokenMatcher::Span> spans;
  im.raw_matcher.Split(text, options.parse_special, &spans);
  std::vector<AddedTokenMatcher::Span> inner;
  for (const auto& span : spans) {
    if (span.id >= 0) {
      ids.push_back(span.id);
      continue;
    }
    // 2. Each text segment is normalized on its own (so a Prepend normalizer adds "▁" to each),
    // 3. normalized added tokens are cut out of it, 4. the rest is pre-tokenized and run through
    // the model.
    std::string normalized(text.substr(span.begin, span.end - span.begin));
    Normalize(im.normalizer, &normalized);
    inner.clear();
    im.normalized_matcher.Split(normalized, options.parse_special, &inner);
    for (const auto& part : inner) {
      if (part.id >= 0) {
        ids.push_back(part.id);
      } else {
        im.EncodeText(std::string_view(normalized).substr(part.begin, part.end - part.begin),
                      span.begin == 0 && part.begin == 0, &ids);
      }
    }
  }
  if (options.add_special_tokens) {
    ids.insert(ids.end(), im.post_processor.suffix.begin(), im.post_processor.suffix.end());
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (const std::string* t = im.TokenForDecode(id, skip_special_tokens)) tokens.push_back(*t);
  }
  std::vector<DecodeStepState> states = InitialDecodeStates(im.decoder);
  std::string out;
  RunDecodeChain(im.decoder, states, std::move(tokens), /*final=*/true, &out);
  return out;
}

int32_t Tokenizer::bos_id() const { return impl_->bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->eos_id; }
int32_t Tokenizer::unk_id() const { return impl_->model.unk_id; }
int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added_by_content.find(key); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (const auto it = impl_->model.vocab.find(key); it != impl_->model.vocab.end()) {
    return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* t = impl_->TokenForDecode(id, /*skip_special_tokens=*/false);
  if (t == nullptr) return std::nullopt;
  return *t;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added_tokens[it->second].special;
}

// ---------------------------------------------------------------------------------------------

struct StreamingDecoder::State {
  std::vector<DecodeStepState> steps;
  bool finished = false;
};

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      state_(std::make_unique<State>()) {
  state_->steps = InitialDecodeStates(tokenizer_.impl_->decoder);
}

StreamingDecoder::~StreamingDecoder() = default;

std::string StreamingDecoder::Next(int32_t id) {
  std::string out;
  if (state_->finished) return out;
  const std::string* token = tokenizer_.impl_->TokenForDecode(id, skip_special_tokens_);
  if (token == nullptr) return out;
  RunDecodeChain(tokenizer_.impl_->decoder, state_->steps, {*token}, /*final=*/false, &out);
  return out;
}

std::string StreamingDecoder::Finish() {
  std::string out;
  if (state_->finished) return out;
  state_->finished = true;
  RunDecodeChain(tokenizer_.impl_->decoder, state_->steps, {}, /*final=*/true, &out);
  return out;
}

}  // namespace loraserve::core
