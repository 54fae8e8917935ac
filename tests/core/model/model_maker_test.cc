// The built-in default model: it loads through the same paths as a downloaded checkpoint, its
// bytes depend only on the seed, and its tokenizer round-trips text.
#include "core/model/model_maker.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/engine/generate.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/model/model.h"
#include "core/tokenizer/tokenizer.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

std::string Slurp(const std::string& path) {
  auto bytes = ReadFile(path);
  EXPECT_OK(bytes.status());
  return bytes.ok() ? *bytes : std::string();
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.ToJson(), b.ToJson());
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
}

TEST(ModelMakerTest, ParsesPresets) {
  ASSERT_OK_AND_ASSIGN(ModelPreset p, ParseModelPreset("tiny"));
  EXPECT_EQ(p, ModelPreset::kTiny);
  ASSERT_OK_AND_ASSIGN(p, ParseModelPreset("bench"));
  EXPECT_EQ(p, ModelPreset::kBench);
  EXPECT_THAT(ParseModelPreset("huge"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_STREQ(ModelPresetName(ModelPreset::kBench), "bench");
}

TEST(ModelMakerTest, WrittenDirectoryLoadsAndRuns) {
  const std::string dir = testing::MakeTempDir() + "/tiny";
  ASSERT_OK(WriteDemoModel(dir, ModelMakerOptions()));
  ASSERT_OK_AND_ASSIGN(DemoModel made, MakeDemoModel(ModelMakerOptions()));
  ASSERT_OK_AND_ASSIGN(auto model, Model::Load(dir, ModelOptions()));
  ASSERT_OK_AND_ASSIGN(auto tokenizer, Tokenizer::FromFile(dir + "/tokenizer.json"));

  const ModelConfig& c = model->config();
  ExpectSameConfig(c, made.config);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 4);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.intermediate_size, 176);
  EXPECT_TRUE(model->head_tied());
  EXPECT_GE(c.vocab_size, tokenizer->vocab_size());
  EXPECT_EQ(c.vocab_size % 64, 0);
  EXPECT_EQ(tokenizer->bos_id(), c.bos_token_id);
  EXPECT_EQ(std::vector<int64_t>{tokenizer->eos_id()}, c.eos_token_ids);
  EXPECT_EQ(model->name(), "tiny");

  // The same weights as in memory.
  ASSERT_OK_AND_ASSIGN(auto from_memory,
                       Model::FromTensors(made.config, made.tensors, ModelOptions(), "tiny"));
  EXPECT_EQ(from_memory->fingerprint(), model->fingerprint());

  const std::vector<int32_t> ids = tokenizer->Encode("The server loads the model.");
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, model->Score(ids));
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{static_cast<int64_t>(ids.size()), c.vocab_size}));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  // Random but not degenerate: the rows differ and the logits are spread out.
  EXPECT_GT((logits[0] - logits[1]).abs().max().item<double>(), 0.1);
  EXPECT_GT(logits.std().item<double>(), 0.1);

  // End to end through generation.
  SamplingOptions o;
  o.seed = 1;
  o.max_new_tokens = 8;
  o.stop_on_eos = false;
  ASSERT_OK_AND_ASSIGN(GenerationResult r, Generate(*model, *tokenizer, ids, o));
  EXPECT_EQ(r.tokens.size(), 8u);
}

TEST(ModelMakerTest, SameSeedSameBytes) {
  const std::string root = testing::MakeTempDir();
  ModelMakerOptions o;
  o.seed = 17;
  ASSERT_OK(WriteDemoModel(root + "/a", o));
  ASSERT_OK(WriteDemoModel(root + "/b", o));
  o.seed = 18;
  ASSERT_OK(WriteDemoModel(root + "/c", o));
  for (const char* file : {"config.json", "tokenizer.json", "model.safetensors"}) {
    SCOPED_TRACE(file);
    const std::string a = Slurp(root + "/a/" + file);
    EXPECT_FALSE(a.empty());
    EXPECT_EQ(a, Slurp(root + "/b/" + file));
  }
  EXPECT_EQ(Slurp(root + "/a/config.json"), Slurp(root + "/c/config.json"));
  EXPECT_EQ(Slurp(root + "/a/tokenizer.json"), Slurp(root + "/c/tokenizer.json"));
  EXPECT_NE(Slurp(root + "/a/model.safetensors"), Slurp(root + "/c/model.safetensors"));
}

TEST(ModelMakerTest, RefusesNonEmptyDirectoryUnlessOverwriting) {
  const std::string dir = testing::MakeTempDir();
  ASSERT_OK(WriteFileAtomically(dir + "/notes.txt", "keep me"));
  EXPECT_THAT(WriteDemoModel(dir, ModelMakerOptions()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not empty")));
  EXPECT_FALSE(FileExists(dir + "/config.json"));
  EXPECT_THAT(WriteDemoModel(dir + "/notes.txt", ModelMakerOptions()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a directory")));
  ModelMakerOptions o;
  o.overwrite = true;
  ASSERT_OK(WriteDemoModel(dir, o));
  EXPECT_OK(Model::Load(dir, ModelOptions()).status());
  EXPECT_EQ(Slurp(dir + "/notes.txt"), "keep me");
}

TEST(ModelMakerTest, ConfigRoundTrip) {
  const std::string dir = testing::MakeTempDir() + "/m";
  ASSERT_OK(WriteDemoModel(dir, ModelMakerOptions()));
  ASSERT_OK_AND_ASSIGN(DemoModel made, MakeDemoModel(ModelMakerOptions()));
  ASSERT_OK_AND_ASSIGN(ModelConfig again, ModelConfig::FromJson(made.config.ToJson(), "memory"));
  ExpectSameConfig(again, made.config);
  ASSERT_OK_AND_ASSIGN(Json file, ReadJsonFile(dir + "/config.json"));
  ASSERT_OK_AND_ASSIGN(ModelConfig from_file, ModelConfig::FromJson(file, "config.json"));
  ExpectSameConfig(from_file, made.config);
}

TEST(ModelMakerTest, BenchPresetShapeAndThreadIndependentWeights) {
  ModelMakerOptions o;
  o.preset = ModelPreset::kBench;
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  at::Tensor head_one_thread;
  {
    ASSERT_OK_AND_ASSIGN(DemoModel one, MakeDemoModel(o));
    head_one_thread = one.tensors.at("lm_head.weight");
  }
  at::set_num_threads(4);
  ASSERT_OK_AND_ASSIGN(DemoModel m, MakeDemoModel(o));
  at::set_num_threads(threads);

  const ModelConfig& c = m.config;
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_EQ(c.intermediate_size, 2816);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_FALSE(c.tie_word_embeddings);
  ASSERT_OK_AND_ASSIGN(ModelConfig again, ModelConfig::FromJson(c.ToJson(), "memory"));
  ExpectSameConfig(again, c);
  int64_t params = 0;
  for (const auto& [name, t] : m.tensors) params += t.numel();
  EXPECT_GT(params, 210'000'000);
  EXPECT_LT(params, 230'000'000);
  // Filled in parallel, the weights do not depend on the thread count.
  EXPECT_TRUE(at::equal(head_one_thread, m.tensors.at("lm_head.weight")));
  // The uniform fill has the intended spread: stddev 1/sqrt(hidden).
  EXPECT_NEAR(head_one_thread.std().item<double>(), 1.0 / 32, 1e-4);
}

TEST(DemoTokenizerTest, RoundTripsTextAndUsesMerges) {
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromJson(DemoTokenizerJson(), "demo"));
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->TokenToId("<0x00>"), 3);
  EXPECT_EQ(tok->TokenToId("<0xFF>"), 258);
  EXPECT_TRUE(tok->IsSpecial(2));
  EXPECT_GT(tok->vocab_size(), 3 + 256 + 95 + 100);  // more than 100 merged pieces
  EXPECT_LE(tok->vocab_size(), 1024);

  EncodeOptions no_special;
  no_special.add_special_tokens = false;
  for (const std::string text :
       {"Once upon a time, there was a little girl named Lily.", "the and to of",
        "  two leading spaces and trailing  ", "Tabs\tand\nnewlines\n\n", "digits 0123456789 !?",
        "café naïve résumé", "日本語のテキスト", "emoji 🦙 done", "MiXeD CaSe WoRdS", ""}) {
    SCOPED_TRACE(text);
    const std::vector<int32_t> ids = tok->Encode(text, no_special);
    EXPECT_EQ(tok->Decode(ids, true), text);
    const std::vector<int32_t> with_bos = tok->Encode(text);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], 1);
    EXPECT_EQ(tok->Decode(with_bos, /*skip_special_tokens=*/true), text);
  }
  // Common words are single pieces; characters outside the vocabulary fall back to bytes.
  EXPECT_EQ(tok->Encode("the and", no_special),
            (std::vector<int32_t>{*tok->TokenToId("▁the"), *tok->TokenToId("▁and")}));
  EXPECT_EQ(tok->Encode("é", no_special),
            (std::vector<int32_t>{*tok->TokenToId("▁"), *tok->TokenToId("<0xC3>"),
                                  *tok->TokenToId("<0xA9>")}));
  const std::vector<int32_t> sentence = tok->Encode("The server loads the model.");
  EXPECT_LT(sentence.size(), 12u);  // far fewer than its 27 characters
}

}  // namespace
}  // namespace loraserve::core
