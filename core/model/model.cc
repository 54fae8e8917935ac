#include "core/model/model.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/io/tensor_io.h"
#include "core/model/decode_attention.h"
#include "core/model/small_forward.h"

namespace loraserve::core {
namespace {

int64_t ElementSize(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// A fast, non-cryptographic 64-bit fingerprint of tensor names and bytes (identity check for
// adapters and exports, not security).
class Fingerprint {
 public:
  void Add(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      Mix(w);
    }
    uint64_t tail = 0;
    for (size_t k = 0; i < n; ++i, ++k) tail |= static_cast<uint64_t>(p[i]) << (8 * k);
    Mix(tail ^ (static_cast<uint64_t>(n) << 56));
  }
  std::string Hex() const { return absl::StrFormat("%016x", h_); }

 private:
  void Mix(uint64_t w) {
    h_ ^= w + 0x9e3779b97f4a7c15ull + (h_ << 6) + (h_ >> 2);
    h_ *= 0xff51afd7ed558ccdull;
    h_ ^= h_ >> 33;
  }
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// Inverse frequencies of the rotary embedding, with Llama-3 / linear scaling, exactly as
// transformers' ROPE_INIT_FUNCTIONS compute them (float32).
at::Tensor RopeInvFreq(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  at::Tensor inv = 1.0 / at::pow(c.rope_theta, at::arange(0, dim, 2, at::kLong).to(at::kFloat) /
                                                   static_cast<double>(dim));
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "linear") {
    inv = inv / s.factor;
  } else if (s.type == "llama3") {
    const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / s.factor, inv);
    at::Tensor smooth = (old_ctx / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv = at::where(medium, smoothed, scaled);
  }
  return inv;
}

// HF rotate_half convention: x*cos + rotate_half(x)*sin, x [T, heads, D], cos/sin [T, 1, D].
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

// The checks every forward makes on a sequence's new tokens: `total` positions fit the context,
// every id is in the vocabulary.
absl::Status CheckNewTokens(const ModelConfig& c, int64_t seq_id, int64_t total, absl::Span<const int32_t> tokens) {
  if (total > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, " would reach ", total,
                                                   " tokens, past max_position_embeddings ",
                                                   c.max_position_embeddings));
  }
  for (const int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- KvCache

KvCache::KvCache(const ModelConfig& config, const ModelOptions& options, int64_t budget_bytes)
    : layers_(config.num_hidden_layers),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      options_(options),
      bytes_per_token_(2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim *
                       ElementSize(options.dtype)),
      budget_bytes_(budget_bytes) {}

KvCache::~KvCache() = default;

absl::Status KvCache::AddSequence(int64_t seq_id) {
  if (seqs_.count(seq_id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already in the KV cache"));
  }
  seqs_.emplace(seq_id, Sequence());
  return absl::OkStatus();
}

void KvCache::RemoveSequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  bytes_reserved_ -= it->second.capacity * bytes_per_token_;
  seqs_.erase(it);
}

bool KvCache::HasSequence(int64_t seq_id) const { return seqs_.count(seq_id) > 0; }

int64_t KvCache::Length(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? -1 : it->second.length;
}

KvCache::Sequence* KvCache::Find(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : &it->second;
}

absl::Status KvCache::Reserve(int64_t seq_id, int64_t total_tokens) {
  Sequence* s = Find(seq_id);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " not in the KV cache"));
  if (total_tokens <= s->capacity) return absl::OkStatus();
  // Grow geometrically (amortised copies) but never past what the budget allows.
  int64_t want = std::max<int64_t>(total_tokens, std::min<int64_t>(2 * s->capacity, total_tokens + 256));
  want = std::max<int64_t>(want, 16);
  auto fits = [&](int64_t cap) {
    return budget_bytes_ <= 0 ||
           bytes_reserved_ + (cap - s->capacity) * bytes_per_token_ <= budget_bytes_;
  };
  if (!fits(want)) want = total_tokens;
  if (!fits(want)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache budget exhausted: ", bytes_reserved_, " of ", budget_bytes_, " bytes reserved, ",
        (total_tokens - s->capacity) * bytes_per_token_, " more needed"));
  }
  return CallTorch("growing the KV cache", [&]() {
    const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
    if (s->k.empty()) {
      s->k.resize(layers_);
      s->v.resize(layers_);
    }
    for (int64_t l = 0; l < layers_; ++l) {
      at::Tensor nk = at::empty({kv_heads_, want, head_dim_}, opts);
      at::Tensor nv = at::empty({kv_heads_, want, head_dim_}, opts);
      if (s->length > 0) {
        nk.narrow(1, 0, s->length).copy_(s->k[l].narrow(1, 0, s->length));
        nv.narrow(1, 0, s->length).copy_(s->v[l].narrow(1, 0, s->length));
      }
      s->k[l] = nk;
      s->v[l] = nv;
    }
    bytes_reserved_ += (want - s->capacity) * bytes_per_token_;
    s->capacity = want;
  });
}

void KvCache::Truncate(int64_t seq_id, int64_t length) {
  if (Sequence* s = Find(seq_id); s != nullptr && length < s->length) {
    s->length = std::max<int64_t>(0, length);
  }
}

// ---------------------------------------------------------------- Model loading

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options) {
  if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("model directory ", dir, " not found"));
  LORASERVE_ASSIGN_OR_RETURN(Json json, ReadJsonFile(JoinPath(dir, "config.json")));
  LORASERVE_ASSIGN_OR_RETURN(ModelConfig config,
                             ModelConfig::FromJson(json, JoinPath(dir, "config.json")));
  std::map<std::string, at::Tensor> tensors;
  const std::string single = JoinPath(dir, "model.safetensors");
  const std::string index = JoinPath(dir, "model.safetensors.index.json");
  if (FileExists(single)) {
    LORASERVE_ASSIGN_OR_RETURN(tensors, LoadSafetensors(single));
  } else if (FileExists(index)) {
    LORASERVE_ASSIGN_OR_RETURN(Json idx, ReadJsonFile(index));
    auto map_it = idx.find("weight_map");
    if (map_it == idx.end() || !map_it->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": missing \"weight_map\" object"));
    }
    std::set<std::string> shards;
    for (const auto& [name, file] : map_it->items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index, ": weight_map[\"", name, "\"] is not a string"));
      }
      shards.insert(file.get<std::string>());
    }
    for (const std::string& shard : shards) {
      if (shard.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index, ": shard name ", shard, " has a '/'"));
      }
      LORASERVE_ASSIGN_OR_RETURN(auto part, LoadSafetensors(JoinPath(dir, shard)));
      for (auto& [name, t] : part) tensors[name] = t;
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " has neither model.safetensors nor model.safetensors.index.json"));
  }
  std::string name = dir;
  while (!name.empty() && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  return FromTensors(config, tensors, options, name);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromTensors(
    const ModelConfig& config, const std::map<std::string, at::Tensor>& tensors,
    const ModelOptions& options, const std::string& name) {
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16 && options.dtype != at::kHalf) {
    return absl::InvalidArgumentError("model dtype must be float32, bfloat16 or float16");
  }
  std::unique_ptr<Model> m(new Model());
  m->config_ = config;
  m->options_ = options;
  m->name_ = name;
  LORASERVE_RETURN_IF_ERROR(m->Init(tensors));
  return m;
}

absl::Status Model::Init(const std::map<std::string, at::Tensor>& tensors) {
  const ModelConfig& c = config_;
  std::vector<std::string> missing;
  std::set<std::string> used;
  auto get = [&](const std::string& name, std::vector<int64_t> shape) -> at::Tensor {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
      return at::Tensor();
    }
    used.insert(name);
    if (it->second.sizes() != at::IntArrayRef(shape)) {
      missing.push_back(absl::StrCat(name, " (shape ", c10::str(it->second.sizes()), ", expected ",
                                     c10::str(at::IntArrayRef(shape)), ")"));
      return at::Tensor();
    }
    return it->second;
  };
  return CallTorch("loading model weights", [&]() -> absl::Status {
    c10::InferenceMode guard;
    const auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
    auto convert = [&](const at::Tensor& t) { return t.defined() ? t.to(opts).contiguous() : t; };
    Fingerprint fp;
    for (const auto& [name, t] : tensors) {
      fp.Add(name.data(), name.size());
      at::Tensor cpu = t.to(at::kCPU).contiguous();
      fp.Add(cpu.data_ptr(), cpu.nbytes());
      num_parameters_ += t.numel();
    }
    fingerprint_ = fp.Hex();

    const int64_t h = c.hidden_size, hd = c.head_dim;
    const int64_t q_out = c.num_attention_heads * hd, kv_out = c.num_key_value_heads * hd;
    embed_ = convert(get("model.embed_tokens.weight", {c.vocab_size, h}));
    final_norm_ = convert(get("model.norm.weight", {h}));
    auto add_linear = [&](const std::string& name, int64_t in, int64_t out, bool bias) {
      LinearModule lm;
      lm.id = static_cast<int>(linears_.size());
      lm.name = name;
      lm.in_features = in;
      lm.out_features = out;
      lm.weight = convert(get(name + ".weight", {out, in}));
      if (bias) lm.bias = convert(get(name + ".bias", {out}));
      linear_index_[name] = lm.id;
      linears_.push_back(std::move(lm));
      return static_cast<int>(linears_.size() - 1);
    };
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      Layer layer;
      layer.input_norm = convert(get(p + "input_layernorm.weight", {h}));
      layer.post_norm = convert(get(p + "post_attention_layernorm.weight", {h}));
      layer.q = add_linear(p + "self_attn.q_proj", h, q_out, c.attention_bias);
      layer.k = add_linear(p + "self_attn.k_proj", h, kv_out, c.attention_bias);
      layer.v = add_linear(p + "self_attn.v_proj", h, kv_out, c.attention_bias);
      layer.o = add_linear(p + "self_attn.o_proj", q_out, h, c.o_proj_bias);
      layer.gate = add_linear(p + "mlp.gate_proj", h, c.intermediate_size, c.mlp_bias);
      layer.up = add_linear(p + "mlp.up_proj", h, c.intermediate_size, c.mlp_bias);
      layer.down = add_linear(p + "mlp.down_proj", c.intermediate_size, h, c.mlp_bias);
      layers_.push_back(layer);
    }
    // lm_head: its own tensor when stored, otherwise tied to the embedding.
    LinearModule head;
    head.id = static_cast<int>(linears_.size());
    head.name = "lm_head";
    head.in_features = h;
    head.out_features = c.vocab_size;
    if (tensors.count("lm_head.weight")) {
      head.weight = convert(get("lm_head.weight", {c.vocab_size, h}));
    } else if (c.tie_word_embeddings) {
      head.weight = embed_;
    } else {
      missing.push_back("lm_head.weight (tie_word_embeddings is false)");
    }
    linear_index_[head.name] = head.id;
    linears_.push_back(std::move(head));

    for (const auto& [name, t] : tensors) {
      // Old Llama checkpoints carry the rotary buffer; it is recomputed, not loaded.
      if (!used.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos) {
        missing.push_back(absl::StrCat(name, " (present but unused by this config)"));
      }
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size() && i < 8; ++i) absl::StrAppend(&list, i ? ", " : "", missing[i]);
      if (missing.size() > 8) absl::StrAppend(&list, ", ... (", missing.size(), " in all)");
      return absl::InvalidArgumentError(
          absl::StrCat("model ", name_, ": missing, mis-shaped or unexpected tensors: ", list));
    }
    // Rotary tables, float32, for every position up to the configured maximum.
    at::Tensor inv = RopeInvFreq(c);
    at::Tensor pos = at::arange(c.max_position_embeddings, at::kFloat);
    at::Tensor freqs = at::outer(pos, inv);
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    rope_cos_ = emb.cos().to(options_.device);
    rope_sin_ = emb.sin().to(options_.device);
    return absl::OkStatus();
  });
}

const LinearModule* Model::FindLinear(const std::string& name) const {
  auto it = linear_index_.find(name);
  return it == linear_index_.end() ? nullptr : &linears_[it->second];
}

LinearModule* Model::MutableLinear(const std::string& name) {
  auto it = linear_index_.find(name);
  return it == linear_index_.end() ? nullptr : &linears_[it->second];
}

std::vector<std::pair<std::string, at::Tensor>> Model::NormWeights() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    out.emplace_back(p + "input_layernorm.weight", layers_[l].input_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", layers_[l].post_norm);
  }
  out.emplace_back("model.norm.weight", final_norm_);
  return out;
}

bool Model::head_tied() const {
  return linears_.back().weight.defined() && linears_.back().weight.is_same(embed_);
}

// ---------------------------------------------------------------- Forward

at::Tensor Model::RmsNorm(const at::Tensor& x, const at::Tensor& w) const {
  // transformers LlamaRMSNorm: normalise in float32, scale after casting back.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + config_.rms_norm_eps);
  return w * xf.to(x.scalar_type());
}

at::Tensor Model::ApplyLinear(const LinearModule& m, const at::Tensor& x, ForwardHooks* hooks) const {
  at::Tensor y = m.bias.defined() ? at::linear(x, m.weight, m.bias) : at::linear(x, m.weight);
  return hooks != nullptr ? hooks->OnLinear(m, x, y) : y;
}

absl::StatusOr<at::Tensor> Model::Forward(absl::Span<const SequenceInput> batch, KvCache* cache,
                                          LogitsMode mode, ForwardHooks* hooks) const {
  const ModelConfig& c = config_;
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  // Validate everything before touching the cache.
  std::vector<KvCache::Sequence*> seqs;
  std::vector<int64_t> offsets;  // first token row of each sequence
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::set<int64_t> seen;
  for (const SequenceInput& in : batch) {
    KvCache::Sequence* s = cache->Find(in.seq_id);
    if (s == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown sequence ", in.seq_id));
    if (!seen.insert(in.seq_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", in.seq_id, " appears twice in one batch"));
    }
    if (in.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", in.seq_id, " has no new tokens"));
    LORASERVE_RETURN_IF_ERROR(
        CheckNewTokens(c, in.seq_id, s->length + static_cast<int64_t>(in.tokens.size()), in.tokens));
    offsets.push_back(static_cast<int64_t>(ids.size()));
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      ids.push_back(in.tokens[i]);
      positions.push_back(s->length + static_cast<int64_t>(i));
    }
    seqs.push_back(s);
  }
  // Reserve KV space for every sequence; roll back nothing is needed since Reserve only grows.
  for (size_t i = 0; i < batch.size(); ++i) {
    LORASERVE_RETURN_IF_ERROR(cache->Reserve(batch[i].seq_id, seqs[i]->length + static_cast<int64_t>(batch[i].tokens.size())));
  }

  return CallTorch("forward", [&]() -> at::Tensor {
    c10::InferenceMode guard;
    const auto dev = options_.device;
    const int64_t T = static_cast<int64_t>(ids.size());
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
    const int64_t groups = nh / nkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    at::Tensor id_t = at::tensor(at::ArrayRef<int32_t>(ids), at::kInt).to(at::kLong).to(dev);
    at::Tensor pos_t = at::tensor(at::ArrayRef<int64_t>(positions), at::kLong).to(dev);
    at::Tensor cos = rope_cos_.index_select(0, pos_t).unsqueeze(1).to(options_.dtype);  // [T,1,D]
    at::Tensor sin = rope_sin_.index_select(0, pos_t).unsqueeze(1).to(options_.dtype);

    at::Tensor x = at::embedding(embed_, id_t);
    if (hooks != nullptr) x = hooks->OnEmbedding(id_t, x);

    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      at::Tensor hn = RmsNorm(x, layer.input_norm);
      at::Tensor q = ApplyLinear(linears_[layer.q], hn, hooks).view({T, nh, hd});
      at::Tensor k = ApplyLinear(linears_[layer.k], hn, hooks).view({T, nkv, hd});
      at::Tensor v = ApplyLinear(linears_[layer.v], hn, hooks).view({T, nkv, hd});
      q = ApplyRope(q, cos, sin).contiguous();
      k = ApplyRope(k, cos, sin).contiguous();
      v = v.contiguous();
      at::Tensor attn = at::empty({T, nh * hd}, x.options());
      // Decode rows (one new token) of every sequence at once when the fused kernel applies.
      const bool fused = options_.fused_decode_attention && FusedDecodeAttentionSupported(q);
      if (fused) {
        std::vector<DecodeAttentionSeq> decoding;
        for (size_t i = 0; i < batch.size(); ++i) {
          if (batch[i].tokens.size() != 1) continue;
          const int64_t past = seqs[i]->length;
          const int64_t window = c.sliding_window;
          decoding.push_back({seqs[i]->k[l], seqs[i]->v[l], offsets[i], past,
                              window > 0 ? std::max<int64_t>(0, past + 1 - window) : 0});
        }
        FusedDecodeAttention(q, k, v, decoding, scale, attn);
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        KvCache::Sequence* s = seqs[i];
        const int64_t n = static_cast<int64_t>(batch[i].tokens.size());
        if (fused && n == 1) continue;
        const int64_t r0 = offsets[i], past = s->length, total = past + n;
        s->k[l].narrow(1, past, n).copy_(k.narrow(0, r0, n).transpose(0, 1));
        s->v[l].narrow(1, past, n).copy_(v.narrow(0, r0, n).transpose(0, 1));
        // Sliding window: no query of this chunk sees keys before `first`.
        const int64_t window = c.sliding_window;
        const int64_t first = window > 0 ? std::max<int64_t>(0, past + 1 - window) : 0;
        const int64_t span = total - first;
        at::Tensor keys = s->k[l].narrow(1, first, span).unsqueeze(1);    // [nkv,1,L,D]
        at::Tensor values = s->v[l].narrow(1, first, span).unsqueeze(1);  // [nkv,1,L,D]
        // Query heads grouped by their kv head: [nkv, groups, n, D].
        at::Tensor qi = q.narrow(0, r0, n).view({n, nkv, groups, hd}).permute({1, 2, 0, 3});
        at::Tensor scores = at::matmul(qi, keys.transpose(-1, -2)).to(at::kFloat) * scale;
        if (n > 1) {
          // Query j (position past + j) sees keys first..past + j, and within the window only
          // those after past + j - window.
          at::Tensor ones = at::ones({n, span}, at::TensorOptions().dtype(at::kBool).device(dev));
          at::Tensor mask = ones.triu(past - first + 1);
          if (window > 0) mask = mask.logical_or(ones.tril(past - first - window));
          scores.masked_fill_(mask, -std::numeric_limits<float>::infinity());
        }
        at::Tensor probs = at::softmax(scores, -1).to(options_.dtype);
        at::Tensor out = at::matmul(probs, values);  // [nkv, groups, n, D]
        attn.narrow(0, r0, n).copy_(out.permute({2, 0, 1, 3}).reshape({n, nh * hd}));
      }
      x = x + ApplyLinear(linears_[layer.o], attn, hooks);
      at::Tensor h2 = RmsNorm(x, layer.post_norm);
      at::Tensor gate = ApplyLinear(linears_[layer.gate], h2, hooks);
      at::Tensor up = ApplyLinear(linears_[layer.up], h2, hooks);
      x = x + ApplyLinear(linears_[layer.down], at::silu(gate) * up, hooks);
    }
    for (size_t i = 0; i < batch.size(); ++i) seqs[i]->length += static_cast<int64_t>(batch[i].tokens.size());

    at::Tensor rows;
    if (mode == LogitsMode::kLast) {
      std::vector<int64_t> last;
      for (size_t i = 0; i < batch.size(); ++i) last.push_back(offsets[i] + static_cast<int64_t>(batch[i].tokens.size()) - 1);
      rows = at::tensor(at::ArrayRef<int64_t>(last), at::kLong).to(dev);
      x = x.index_select(0, rows);
    } else {
      rows = at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev));
    }
    at::Tensor hidden = RmsNorm(x, final_norm_);
    const LinearModule& head = linears_.back();
    at::Tensor logits = at::linear(hidden, head.weight, head.bias);  // a bias only from a merged lora_bias
    if (hooks != nullptr) logits = hooks->OnHead(hidden, rows, logits);
    return logits.to(at::kFloat);
  });
}

// Work bound of the small forward: tokens × parameters multiply-adds (16M: ~60 tokens of a
// 260K-parameter model, ~1 ms on one core); above it the LibTorch forward's dispatch cost is small
// beside the arithmetic, and its GEMMs use every thread.
constexpr int64_t kSmallForwardMaxWork = int64_t{16} << 20;
constexpr int64_t kSmallForwardMaxTokens = 64;

bool Model::ScoresInPlainLoops(int64_t num_tokens) const {
  return options_.small_cpu_forward && options_.device.is_cpu() && options_.dtype == at::kFloat &&
         num_tokens > 0 && num_tokens <= kSmallForwardMaxTokens &&
         num_tokens * num_parameters_ <= kSmallForwardMaxWork && config_.hidden_act == "silu";
}

absl::StatusOr<at::Tensor> Model::ScoreSmall(absl::Span<const int32_t> tokens) const {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  LORASERVE_RETURN_IF_ERROR(CheckNewTokens(c, /*seq_id=*/0, n, tokens));
  return CallTorch("forward", [&]() -> at::Tensor {
    // Merges may replace weight tensors: every pointer is taken now, and a tensor that is not a
    // contiguous float32 CPU one sends the call to the LibTorch forward.
    bool plain = true;
    auto ptr = [&plain](const at::Tensor& t) -> const float* {
      if (!t.defined()) return nullptr;
      if (t.scalar_type() != at::kFloat || !t.is_cpu() || !t.is_contiguous()) {
        plain = false;
        return nullptr;
      }
      return t.data_ptr<float>();
    };
    auto linear = [&](int id) {
      const LinearModule& lm = linears_[id];
      return SmallLinear{ptr(lm.weight), ptr(lm.bias), lm.in_features, lm.out_features};
    };
    SmallModelView view;
    view.hidden = c.hidden_size;
    view.heads = c.num_attention_heads;
    view.kv_heads = c.num_key_value_heads;
    view.head_dim = c.head_dim;
    view.vocab = c.vocab_size;
    view.sliding_window = c.sliding_window;
    view.rms_norm_eps = static_cast<float>(c.rms_norm_eps);
    view.embedding = ptr(embed_);
    view.final_norm = ptr(final_norm_);
    view.rope_cos = ptr(rope_cos_);
    view.rope_sin = ptr(rope_sin_);
    for (const Layer& l : layers_) {
      view.layers.push_back({ptr(l.input_norm), ptr(l.post_norm), linear(l.q), linear(l.k), linear(l.v),
                             linear(l.o), linear(l.gate), linear(l.up), linear(l.down)});
    }
    view.head = linear(linears_.back().id);
    if (!plain) return at::Tensor();
    at::Tensor logits = at::empty({n, c.vocab_size}, at::kFloat);
    SmallScore(view, tokens.data(), n, logits.data_ptr<float>());
    return logits;
  });
}

absl::StatusOr<at::Tensor> Model::Score(absl::Span<const int32_t> tokens, ForwardHooks* hooks) const {
  if (hooks == nullptr && ScoresInPlainLoops(static_cast<int64_t>(tokens.size()))) {
    LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits, ScoreSmall(tokens));
    if (logits.defined()) return logits;
  }
  KvCache cache(config_, options_);
  LORASERVE_RETURN_IF_ERROR(cache.AddSequence(0));
  SequenceInput in{0, std::vector<int32_t>(tokens.begin(), tokens.end())};
  return Forward(absl::MakeConstSpan(&in, 1), &cache, LogitsMode::kAll, hooks);
}

}  // namespace loraserve::core
