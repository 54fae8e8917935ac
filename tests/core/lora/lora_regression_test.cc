// Regressions found by the live PEFT differential test (tests/peft_live): each bug as a C++ test
// on the built-in random model, so it stays fixed in every build, PyPI or not.
//   - LoRA on lm_head was ignored unless merged (and not undone for other rows while merged);
//   - DoRA on the input embedding (PEFT's DoraEmbeddingLayer) was refused;
//   - a DoRA adapter's rows beside a merged adapter with lora_bias used the merged bias.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using AdapterPtr = std::shared_ptr<const LoraAdapter>;

const std::vector<int32_t> kIds = {1, 74, 87, 181, 61, 170, 152, 66, 18, 90};

double MaxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

class LoraRegressionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(demo_, MakeDemoModel(ModelMakerOptions()));
    ASSERT_OK_AND_ASSIGN(model_, Model::FromTensors(demo_.config, demo_.tensors, ModelOptions(), "tiny"));
    lora_ = std::make_unique<LoraModel>(model_.get());
    ASSERT_OK_AND_ASSIGN(base_, lora_->Score(kIds, nullptr));
  }
  // LoRA (A, B random) on every module named in `targets`; DoRA magnitudes near the base norms.
  AdapterPtr Make(const std::string& name, std::vector<std::string> targets, bool dora, bool lora_bias,
                  int seed) {
    at::manual_seed(seed);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.use_dora = dora;
    cfg.lora_bias = lora_bias;
    cfg.target_list = targets;
    std::map<std::string, at::Tensor> t;
    for (const LinearModule& lm : model_->linears()) {
      if (!cfg.Targets(lm.name, true, lm.name == kHeadModule)) continue;
      const std::string p = std::string(kPeftPrefix) + lm.name;
      t[p + ".lora_A.weight"] = at::randn({4, lm.in_features}) * 0.2;
      t[p + ".lora_B.weight"] = at::randn({lm.out_features, 4}) * 0.2;
      if (lora_bias) t[p + ".lora_B.bias"] = at::randn({lm.out_features}) * 0.2;
      if (dora) t[p + ".lora_magnitude_vector"] = lm.weight.norm(2, {1}) * (1 + 0.2 * at::rand({lm.out_features}));
    }
    if (cfg.Targets(kEmbeddingModule, false, false)) {
      const std::string p = std::string(kPeftPrefix) + kEmbeddingModule;
      const int64_t vocab = demo_.config.vocab_size, hidden = demo_.config.hidden_size;
      t[p + ".lora_embedding_A"] = at::randn({4, vocab}) * 0.2;
      t[p + ".lora_embedding_B"] = at::randn({hidden, 4}) * 0.2;
      if (dora) t[p + ".lora_magnitude_vector"] = model_->embedding().norm(2, {0}) * (1 + 0.2 * at::rand({hidden}));
    }
    auto a = LoraAdapter::FromTensors(name, cfg, t, *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
    EXPECT_OK(a.status());
    return a.ok() ? *a : nullptr;
  }
  at::Tensor Score(const AdapterPtr& a) {
    auto s = lora_->Score(kIds, a);
    EXPECT_OK(s.status());
    return s.ok() ? *s : at::zeros({1});
  }
  // The same merged-model answer computed independently: export, reload, score.
  at::Tensor Exported(const AdapterPtr& a) {
    const std::string dir = testing::MakeTempDir();
    EXPECT_OK(lora_->ExportMerged({a}, dir));
    auto plain = Model::Load(dir, ModelOptions());
    EXPECT_OK(plain.status());
    if (!plain.ok()) return at::zeros({1});
    auto s = (*plain)->Score(kIds);
    EXPECT_OK(s.status());
    return s.ok() ? *s : at::zeros({1});
  }
  // Unmerged, merged, base while merged, after unmerge and the export agree.
  void ExpectMergeConsistent(const AdapterPtr& a) {
    const at::Tensor unmerged = Score(a);
    EXPECT_GT(MaxDiff(unmerged, base_), 1e-2) << "the adapter changes nothing";
    ASSERT_OK(lora_->Merge(a).status());
    EXPECT_LE(MaxDiff(Score(a), unmerged), 1e-4);
    EXPECT_LE(MaxDiff(Score(nullptr), base_), 1e-4);
    ASSERT_OK(lora_->Unmerge(a->name()));
    EXPECT_TRUE(at::equal(Score(nullptr), base_));
    EXPECT_LE(MaxDiff(Exported(a), unmerged), 1e-4);
  }

  DemoModel demo_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
  at::Tensor base_;
};

TEST_F(LoraRegressionTest, LoraOnLmHeadAppliesUnmergedMergedAndInMixedBatches) {
  AdapterPtr head = Make("head", {"lm_head"}, /*dora=*/false, /*lora_bias=*/false, 1);
  AdapterPtr head_dora = Make("head_dora", {"lm_head", "q_proj"}, /*dora=*/true, /*lora_bias=*/false, 2);
  AdapterPtr head_bias = Make("head_bias", {"lm_head"}, /*dora=*/false, /*lora_bias=*/true, 3);
  for (const AdapterPtr& a : {head, head_dora}) ExpectMergeConsistent(a);
  // lora_bias on the head: served (merged too) but not exportable to a bias-less HF head.
  const at::Tensor with_bias = Score(head_bias);
  EXPECT_GT(MaxDiff(with_bias, base_), 1e-2);
  ASSERT_OK(lora_->Merge(head_bias).status());
  EXPECT_LE(MaxDiff(Score(head_bias), with_bias), 1e-4);
  EXPECT_LE(MaxDiff(Score(nullptr), base_), 1e-4);
  ASSERT_OK(lora_->Unmerge("head_bias"));
  EXPECT_THAT(lora_->ExportMerged({head_bias}, testing::MakeTempDir()),
              ::loraserve::testing::StatusIs(absl::StatusCode::kFailedPrecondition));
  // One batch: head LoRA rows, base rows, another adapter's rows; then with `head` merged.
  const at::Tensor alone = Score(head), dora_alone = Score(head_dora);
  for (bool merged : {false, true}) {
    if (merged) {
      ASSERT_OK(lora_->Merge(head).status());
    }
    KvCache cache(model_->config(), model_->options());
    for (int64_t s = 0; s < 3; ++s) ASSERT_OK(cache.AddSequence(s));
    const int64_t n = static_cast<int64_t>(kIds.size());
    ASSERT_OK_AND_ASSIGN(at::Tensor all, lora_->Forward({{0, kIds}, {1, kIds}, {2, kIds}},
                                                        {head, nullptr, head_dora}, &cache, LogitsMode::kAll));
    EXPECT_LE(MaxDiff(all.narrow(0, 0, n), alone), 1e-4) << "merged " << merged;
    EXPECT_LE(MaxDiff(all.narrow(0, n, n), base_), 1e-4) << "merged " << merged;
    EXPECT_LE(MaxDiff(all.narrow(0, 2 * n, n), dora_alone), 1e-4) << "merged " << merged;
  }
  ASSERT_OK(lora_->Unmerge("head"));
}

TEST_F(LoraRegressionTest, DoraOnTheEmbeddingMatchesItsDefinition) {
  AdapterPtr a = Make("embed_dora", {"embed_tokens"}, /*dora=*/true, /*lora_bias=*/false, 4);
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->has_dora());
  // PEFT's DoraEmbeddingLayer: E' = (m / ‖E + ΔE‖ per hidden dimension) ⊙ (E + ΔE), the head
  // left as the checkpoint's: a model with that embedding and an untied head.
  const LoraModule& m = *a->embedding();
  at::Tensor e = model_->embedding() + m.Delta();
  e = e * (m.magnitude / e.norm(2, {0}));
  auto tensors = demo_.tensors;
  ModelConfig cfg = demo_.config;
  tensors["lm_head.weight"] = tensors.at("model.embed_tokens.weight");
  tensors["model.embed_tokens.weight"] = e;
  cfg.tie_word_embeddings = false;
  ASSERT_OK_AND_ASSIGN(auto want_model, Model::FromTensors(cfg, tensors, ModelOptions(), "want"));
  ASSERT_OK_AND_ASSIGN(at::Tensor want, want_model->Score(kIds));
  EXPECT_LE(MaxDiff(Score(a), want), 1e-4);
  ExpectMergeConsistent(a);
  // Merged beside another embedding LoRA: refused (the rescaling does not compose).
  AdapterPtr plain = Make("embed_plain", {"embed_tokens"}, false, false, 5);
  ASSERT_OK(lora_->Merge(plain).status());
  EXPECT_THAT(lora_->Merge(a), ::loraserve::testing::StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_LE(MaxDiff(Score(a), want), 1e-4);  // served through the LoRA path instead
  ASSERT_OK(lora_->Unmerge("embed_plain"));
  // Saved in PEFT layout, it reloads with its magnitude.
  const std::string dir = testing::MakeTempDir();
  ASSERT_OK(SaveAdapter(*a, dir));
  ASSERT_OK_AND_ASSIGN(AdapterPtr again, LoraAdapter::Load("again", dir, *model_, lora_->BaseWeightFn(), {}));
  EXPECT_LE(MaxDiff(Score(again), want), 1e-4);
}

TEST_F(LoraRegressionTest, DoraRowsBesideAMergedLoraBiasAdapter) {
  AdapterPtr with_bias = Make("with_bias", {"q_proj", "v_proj"}, /*dora=*/false, /*lora_bias=*/true, 6);
  AdapterPtr dora = Make("dora", {"q_proj", "k_proj"}, /*dora=*/true, /*lora_bias=*/false, 7);
  const at::Tensor dora_alone = Score(dora);
  ASSERT_OK(lora_->Merge(with_bias).status());  // materialises q/v biases s·b_B in the served model
  EXPECT_LE(MaxDiff(Score(dora), dora_alone), 1e-4);
  ASSERT_OK(lora_->Unmerge("with_bias"));
}

}  // namespace
}  // namespace loraserve::core
