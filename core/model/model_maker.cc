#include "core/model/model_maker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/io/file_util.h"
#include "core/io/tensor_io.h"

namespace loraserve::core {
namespace {

constexpr char kMetaspace[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, "▁"

// The text the demo tokenizer's merges are learnt from: plain English with the most common words
// and word pieces. Changing it changes the tokenizer (and the tiny model's vocabulary size).
constexpr char kTrainingText[] =
    "Once upon a time, there was a little girl named Lily. She lived in a small house with her "
    "mother and her father. Every day she would go outside to play in the garden. She liked to "
    "look at the flowers and the trees, and she liked to watch the birds that were singing in the "
    "morning. One day, Lily saw a big red ball under the tree. She wanted to play with it, but it "
    "was too high for her to reach. She asked her mother for help. Her mother said, \"Of course, "
    "I will help you.\" They took the ball and played together until the sun went down.\n"
    "The next morning, Lily and her friend Tom went to the park. They ran and jumped and laughed "
    "all day long. Tom found a shiny stone near the water. He showed it to Lily and she was very "
    "happy. They decided to keep the stone in a special box at home. When they were tired, they "
    "sat on the grass and talked about what they would do tomorrow.\n"
    "This is a simple model for testing and for the demo. It can read and write text, but what it "
    "writes has no meaning, because its weights are random numbers. The server loads the model, "
    "and the adapters change what the model says. There are many adapters, one for each user, "
    "and each of them has its own name. You can ask the server to generate text with any of "
    "them, or with none at all. If you want to know more, please read the documentation that "
    "comes with the project, which explains how everything works and where each part of the "
    "system should be used.\n"
    "We think that good software is easy to understand, so we have tried to make the code as "
    "clear as possible. Some things were hard to get right, like the cache of keys and values, "
    "the order of the tokens, and the numbers that come out of the model at the end of every "
    "step. Other things were easy. In the end, we are proud of what we have made, and we hope "
    "that you will find it useful and that it will work well for you.\n";

// Upper bound on the tokenizer's size (special + byte + character tokens + merges).
constexpr int kMaxTokenizerVocab = 1024;

// Splits the normalized training text into the units merges may act within: "▁" + a run of
// letters, a run of letters, or a single other character (punctuation and digits stay separate,
// as sentencepiece's default splitting keeps them). Newlines are left to byte fallback.
std::map<std::vector<std::string>, int> TrainingWords() {
  std::map<std::vector<std::string>, int> words;
  const std::string text = kTrainingText;
  auto is_letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  size_t i = 0;
  bool first = true;  // the Prepend normalizer puts "▁" before the text
  while (i < text.size()) {
    std::vector<std::string> word;
    if (first || text[i] == ' ') {
      word.push_back(kMetaspace);
      if (!first) ++i;
      first = false;
    }
    if (i < text.size() && is_letter(text[i])) {
      while (i < text.size() && is_letter(text[i])) word.emplace_back(1, text[i++]);
    } else if (word.empty() && i < text.size()) {
      if (text[i] != '\n') word.emplace_back(1, text[i]);
      ++i;
    }
    if (!word.empty()) ++words[word];
  }
  return words;
}

// Classic BPE training: repeatedly merge the most frequent adjacent pair (ties: the smallest pair
// in byte order, so the result is deterministic) until no pair occurs twice or the vocabulary is
// full. Returns the merges in rank order; `vocab` gains the merged pieces in the same order.
std::vector<std::pair<std::string, std::string>> LearnMerges(std::vector<std::string>* vocab) {
  std::map<std::vector<std::string>, int> words = TrainingWords();
  std::set<std::string> known(vocab->begin(), vocab->end());
  std::vector<std::pair<std::string, std::string>> merges;
  while (static_cast<int>(vocab->size()) < kMaxTokenizerVocab) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [word, count] : words) {
      for (size_t i = 0; i + 1 < word.size(); ++i) pairs[{word[i], word[i + 1]}] += count;
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int best_count = 1;
    for (const auto& [pair, count] : pairs) {
      if (count > best_count) {  // strict: the first (smallest) pair wins ties
        best = &pair;
        best_count = count;
      }
    }
    if (best == nullptr) break;
    const auto merge = *best;
    const std::string joined = merge.first + merge.second;
    merges.push_back(merge);
    if (known.insert(joined).second) vocab->push_back(joined);
    std::map<std::vector<std::string>, int> next;
    for (const auto& [word, count] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == merge.first && word[i + 1] == merge.second) {
          out.push_back(joined);
          ++i;
        } else {
          out.push_back(word[i]);
        }
      }
      next[out] += count;
    }
    words = std::move(next);
  }
  return merges;
}

Json SpecialToken(int id, const std::string& content) {
  return {{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", false}, {"special", true}};
}

ModelConfig PresetConfig(ModelPreset preset, int64_t tokenizer_vocab) {
  ModelConfig c;
  c.model_type = "llama";
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  if (preset == ModelPreset::kTiny) {
    c.hidden_size = 64;
    c.intermediate_size = 176;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.vocab_size = (tokenizer_vocab + 63) / 64 * 64;
    c.max_position_embeddings = 1024;
    c.tie_word_embeddings = true;
  } else {
    c.hidden_size = 1024;
    c.intermediate_size = 2816;
    c.num_hidden_layers = 12;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 16;
    c.vocab_size = 32000;
    c.max_position_embeddings = 2048;
    c.tie_word_embeddings = false;
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

}  // namespace

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {

uint64_t TensorKey(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return Mix64(seed ^ Mix64(h));
}

}  // namespace

at::Tensor RandomTensor(std::vector<int64_t> shape, double stddev, uint64_t seed,
                        const std::string& name) {
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  const uint64_t key = TensorKey(seed, name);
  const float a = static_cast<float>(std::sqrt(3.0) * stddev);
  at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t r = Mix64(key + static_cast<uint64_t>(i + 1) * 0x9e3779b97f4a7c15ull);
      const float u = static_cast<float>(r >> 40) * 0x1.0p-24f;  // exact, in [0, 1)
      p[i] = (2 * u - 1) * a;
    }
  });
  return t;
}

absl::StatusOr<ModelPreset> ParseModelPreset(absl::string_view name) {
  if (name == "tiny") return ModelPreset::kTiny;
  if (name == "bench") return ModelPreset::kBench;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model preset \"", name, "\" (known: tiny, bench)"));
}

const char* ModelPresetName(ModelPreset preset) {
  return preset == ModelPreset::kTiny ? "tiny" : "bench";
}

Json DemoTokenizerJson() {
  std::vector<std::string> vocab = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) vocab.push_back(absl::StrFormat("<0x%02X>", b));
  // Single characters: "▁" and printable ASCII. Everything else falls back to bytes.
  vocab.push_back(kMetaspace);
  for (char c = '!'; c <= '~'; ++c) vocab.emplace_back(1, c);
  const auto merges = LearnMerges(&vocab);

  Json vocab_json = Json::object();
  for (size_t i = 0; i < vocab.size(); ++i) vocab_json[vocab[i]] = static_cast<int64_t>(i);
  Json merges_json = Json::array();
  for (const auto& [left, right] : merges) merges_json.push_back(left + " " + right);

  const Json bos_template = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
  Json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = {SpecialToken(0, "<unk>"), SpecialToken(1, "<s>"), SpecialToken(2, "</s>")};
  j["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", kMetaspace}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}}}}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {bos_template, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {bos_template,
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
        {{"type", "ByteFallback"}},
        {{"type", "Fuse"}},
        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", "<unk>"},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", true},
                {"byte_fallback", true},
                {"ignore_merges", false},
                {"vocab", std::move(vocab_json)},
                {"merges", std::move(merges_json)}};
  return j;
}

absl::StatusOr<DemoModel> MakeDemoModel(const ModelMakerOptions& options) {
  DemoModel m;
  m.tokenizer = DemoTokenizerJson();
  m.config = PresetConfig(options.preset,
                          static_cast<int64_t>(m.tokenizer["model"]["vocab"].size()));
  const ModelConfig& c = m.config;
  LORASERVE_RETURN_IF_ERROR(CallTorch("making the demo model", [&]() {
    c10::InferenceMode guard;
    const int64_t h = c.hidden_size, hd = c.head_dim, inter = c.intermediate_size;
    const uint64_t seed = options.seed;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, double stddev) {
      m.tensors[name] = RandomTensor(std::move(shape), stddev, seed, name);
    };
    // Scales keep activations of order one through the stack: 1/sqrt(fan_in) for projections,
    // further divided by sqrt(2 * layers) on the two that add into the residual stream (GPT-2's
    // scheme), and unit RMSNorm weights.
    const double in_h = 1.0 / std::sqrt(static_cast<double>(h));
    const double residual = 1.0 / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
    add("model.embed_tokens.weight", {c.vocab_size, h}, 1.0);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      m.tensors[p + "input_layernorm.weight"] = at::ones({h}, at::kFloat);
      m.tensors[p + "post_attention_layernorm.weight"] = at::ones({h}, at::kFloat);
      add(p + "self_attn.q_proj.weight", {c.num_attention_heads * hd, h}, in_h);
      add(p + "self_attn.k_proj.weight", {c.num_key_value_heads * hd, h}, in_h);
      add(p + "self_attn.v_proj.weight", {c.num_key_value_heads * hd, h}, in_h);
      add(p + "self_attn.o_proj.weight", {h, c.num_attention_heads * hd},
          residual / std::sqrt(static_cast<double>(c.num_attention_heads * hd)));
      add(p + "mlp.gate_proj.weight", {inter, h}, in_h);
      add(p + "mlp.up_proj.weight", {inter, h}, in_h);
      add(p + "mlp.down_proj.weight", {h, inter},
          residual / std::sqrt(static_cast<double>(inter)));
    }
    m.tensors["model.norm.weight"] = at::ones({h}, at::kFloat);
    if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, h}, in_h);
  }));
  return m;
}

absl::Status WriteDemoModel(const std::string& dir, const ModelMakerOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
    }
    if (!options.overwrite && !fs::is_empty(dir, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, " is not empty"));
    }
  } else if (!fs::create_directories(dir, ec)) {
    return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  LORASERVE_ASSIGN_OR_RETURN(DemoModel model, MakeDemoModel(options));
  LORASERVE_RETURN_IF_ERROR(
      WriteFileAtomically(JoinPath(dir, "config.json"), model.config.ToJson().dump(2) + "\n"));
  LORASERVE_RETURN_IF_ERROR(
      WriteFileAtomically(JoinPath(dir, "tokenizer.json"), model.tokenizer.dump(1) + "\n"));
  NamedTensors tensors(model.tensors.begin(), model.tensors.end());  // sorted by name
  return SaveSafetensors(JoinPath(dir, "model.safetensors"), tensors);
}

}  // namespace loraserve::core
