// LoRA conformance against what real PEFT computed on the real stories260K model
// (shared/fixtures/peft), plus loraserve's beyond-PEFT promises.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/io/tensor_io.h"
#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/peft_case.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

using AdapterPtr = std::shared_ptr<const LoraAdapter>;

const std::vector<std::string> kSingleCases = {
    "qv_r4", "qv_r4_b", "all_linear_r8_rslora", "patterns", "regex_target",
    "dora_qv", "embed_lora", "modules_to_save_head", "lora_bias"};

using Case = ::loraserve::testing::PeftCase;
using ::loraserve::testing::PeftDir;
Case LoadCase(const std::string& name) { return ::loraserve::testing::LoadPeftCase(name); }
double Excess(const at::Tensor& a, const at::Tensor& b) { return ::loraserve::testing::AllcloseExcess(a, b); }

class LoraFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    ASSERT_OK_AND_ASSIGN(model_, Model::Load(testing::SharedPath("fixtures/models/stories260K"), ModelOptions()));
    lora_ = std::make_unique<LoraModel>(model_.get());
  }
  absl::StatusOr<AdapterPtr> Load(const std::string& c, const std::string& name = "") {
    return LoraAdapter::Load(name.empty() ? c : name, PeftDir(c) + "/adapter", *model_,
                             lora_->BaseWeightFn(), AdapterLoadOptions());
  }
  at::Tensor ScoreOrDie(const std::vector<int32_t>& ids, const AdapterPtr& a) {
    auto s = lora_->Score(ids, a);
    EXPECT_OK(s.status());
    return s.ok() ? *s : at::zeros({1});
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
};

TEST_F(LoraFixtureTest, ScalingsMatchPeft) {
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    std::map<std::string, double> ours;
    for (const LoraModule& m : a->modules()) ours[m.name] = m.scaling;
    ASSERT_EQ(ours.size(), c.json["scaling"].size());
    for (const auto& [module, s] : c.json["scaling"].items()) {
      ASSERT_TRUE(ours.count(module)) << module;
      EXPECT_NEAR(ours[module], s.get<double>(), 1e-6) << module;
    }
  }
}

TEST_F(LoraFixtureTest, UnmergedAdapterLogitsMatchPeft) {
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      at::Tensor got = ScoreOrDie(c.prompts[i], a);
      EXPECT_LE(Excess(got, c.expected.at("logits.adapter.p" + std::to_string(i))), c.atol) << "p" << i;
      EXPECT_LE(Excess(ScoreOrDie(c.prompts[i], nullptr), c.expected.at("logits.base.p" + std::to_string(i))), c.atol);
    }
  }
}

// --adapter_dtype=bfloat16 (issue 13 item 4): lora_A / lora_B stored in bf16, products in fp32.
// The fidelity it keeps, per fixture: max |logits − PEFT's fp32 logits|, printed beside the size
// of the adapter's own effect (max |adapter logits − base logits|) and the fp32 path's error.
TEST_F(LoraFixtureTest, BfloatAdapterWeightsKeepPeftFidelity) {
  AdapterLoadOptions bf16;
  bf16.dtype = "bfloat16";
  double worst = 0;
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, LoraAdapter::Load(name, PeftDir(name) + "/adapter", *model_,
                                                         lora_->BaseWeightFn(), bf16));
    ASSERT_OK_AND_ASSIGN(AdapterPtr f, Load(name));
    double diff = 0, diff32 = 0, effect = 0;
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      const at::Tensor want = c.expected.at("logits.adapter.p" + std::to_string(i)).to(at::kFloat);
      const at::Tensor base = c.expected.at("logits.base.p" + std::to_string(i)).to(at::kFloat);
      diff = std::max(diff, (ScoreOrDie(c.prompts[i], a) - want).abs().max().item<double>());
      diff32 = std::max(diff32, (ScoreOrDie(c.prompts[i], f) - want).abs().max().item<double>());
      effect = std::max(effect, (want - base).abs().max().item<double>());
    }
    std::printf("bf16 adapter %-22s max|diff| %.2e (fp32 adapter %.2e; adapter effect %.2e, %.2f%% of it)\n",
                name.c_str(), diff, diff32, effect, 100 * diff / std::max(effect, 1e-30));
    worst = std::max(worst, diff / std::max(effect, 1e-30));
    // bf16 rounds each weight by up to 2^-9 relative: the error stays within 2% of the effect
    // (measured 0.1% to 0.5%), except on all_linear_r8_rslora, the fixture whose own fp32
    // computations already disagree by a few 1e-4 (peft_device_test): every linear adapted at
    // rsLoRA scaling amplifies the rounding through the layers, measured 5.6%, bound 8%.
    const double bound = name == "all_linear_r8_rslora" ? 0.08 : 0.02;
    EXPECT_LE(diff, bound * effect + c.atol);
  }
  std::printf("bf16 adapters: worst error %.2f%% of the adapter's effect\n", 100 * worst);
}

// Merge → merged weights equal PEFT's, merged logits equal the UNMERGED adapter logits, base and
// other adapters unchanged while merged; unmerge → checkpoint tensors bit for bit.
TEST_F(LoraFixtureTest, MergeUnmergeConformance) {
  ASSERT_OK_AND_ASSIGN(AdapterPtr other, Load("qv_r4_b", "other"));
  Case other_case = LoadCase("qv_r4_b");
  std::vector<at::Tensor> before;
  for (const LinearModule& lm : model_->linears()) before.push_back(lm.weight);
  const at::Tensor embed_before = model_->embedding();
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    ASSERT_OK_AND_ASSIGN(bool merged, lora_->Merge(a));
    EXPECT_TRUE(merged);
    ASSERT_OK_AND_ASSIGN(bool again, lora_->Merge(a));
    EXPECT_FALSE(again) << "re-merge must be a no-op that says so";
    int weight_checks = 0;
    for (const auto& [key, want] : c.expected) {
      if (key.rfind("weight.merged.", 0) != 0) continue;
      const std::string module = key.substr(14, key.size() - 14 - 7);
      const at::Tensor& got = module == kEmbeddingModule ? model_->embedding() : model_->FindLinear(module)->weight;
      EXPECT_LE((got - want).abs().max().item<double>(), 1e-5) << key;
      ++weight_checks;
    }
    if (name != "lora_bias") {
      EXPECT_GE(weight_checks, 2);
    }
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      const std::string p = std::to_string(i);
      EXPECT_LE(Excess(ScoreOrDie(c.prompts[i], a), c.expected.at("logits.adapter.p" + p)), c.atol) << "merged p" << i;
      EXPECT_LE(Excess(ScoreOrDie(c.prompts[i], nullptr), c.expected.at("logits.base.p" + p)), c.atol) << "base while merged p" << i;
      EXPECT_LE(Excess(ScoreOrDie(c.prompts[i], other), other_case.expected.at("logits.adapter.p" + p)), c.atol)
          << "other adapter while merged p" << i;
      if (c.expected.count("logits.merged_untied.p" + p)) {
        EXPECT_LE(Excess(ScoreOrDie(c.prompts[i], a), c.expected.at("logits.merged_untied.p" + p)), c.atol);
      }
    }
    ASSERT_OK(lora_->Unmerge(name));
    EXPECT_THAT(lora_->Unmerge(name), StatusIs(absl::StatusCode::kFailedPrecondition));
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(at::equal(model_->linears()[i].weight, before[i])) << model_->linears()[i].name;
      EXPECT_FALSE(model_->linears()[i].bias.defined());
    }
    EXPECT_TRUE(at::equal(model_->embedding(), embed_before));
    EXPECT_TRUE(model_->head_tied());
    EXPECT_LE(Excess(ScoreOrDie(c.prompts[0], nullptr), c.expected.at("logits.base.p0")), c.atol);
  }
}

TEST_F(LoraFixtureTest, MergeAndUnloadExportLoadsAsPlainModel) {
  const std::string src = testing::SharedPath("fixtures/models/stories260K");
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    const std::string out = testing::MakeTempDir();
    ASSERT_OK(lora_->ExportMerged({a}, out, src));
    EXPECT_TRUE(FileExists(out + "/tokenizer.json"));
    ASSERT_OK_AND_ASSIGN(Json cfg, ReadJsonFile(out + "/config.json"));
    const bool head_changes = name == "embed_lora" || name == "modules_to_save_head";
    EXPECT_EQ(cfg["tie_word_embeddings"].get<bool>(), !head_changes);
    ASSERT_OK_AND_ASSIGN(auto plain, Model::Load(out, ModelOptions()));
    EXPECT_EQ(plain->head_tied(), !head_changes);
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      ASSERT_OK_AND_ASSIGN(at::Tensor got, plain->Score(c.prompts[i]));
      EXPECT_LE(Excess(got, c.expected.at("logits.adapter.p" + std::to_string(i))), c.atol);
    }
  }
}

TEST_F(LoraFixtureTest, GreedyMatchesPeftExceptAtNearTies) {
  for (const std::string& name : kSingleCases) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    for (const Json& g : c.json["greedy"]["adapter"]) {
      const auto ids = g["ids"].get<std::vector<int32_t>>();
      const size_t n_new = g["new_ids"].size();
      const size_t prompt_len = ids.size() - n_new;
      KvCache cache(model_->config(), model_->options());
      ASSERT_OK(cache.AddSequence(0));
      std::vector<int32_t> prompt(ids.begin(), ids.begin() + prompt_len);
      ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Forward({{0, prompt}}, {a}, &cache, LogitsMode::kLast));
      for (size_t t = prompt_len; t < ids.size(); ++t) {
        const int32_t ours = static_cast<int32_t>(logits[0].argmax().item<int64_t>());
        if (ours != ids[t]) {
          const double gap = (logits[0][ours] - logits[0][ids[t]]).item<double>();
          ASSERT_LT(gap, c.atol) << "departs at step " << t << " without a near-tie";
          break;
        }
        ASSERT_OK_AND_ASSIGN(logits, lora_->Forward({{0, {ids[t]}}}, {a}, &cache, LogitsMode::kLast));
      }
    }
  }
}

TEST_F(LoraFixtureTest, PeftMixedBatchesReproduced) {
  for (const std::string& name : {std::string("multi/mixed_batch"), std::string("multi/mixed_batch4")}) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    std::map<std::string, AdapterPtr> loaded;
    for (const auto& [aname, rel] : c.json["adapters_loaded"].items()) {
      ASSERT_OK_AND_ASSIGN(loaded[aname], LoraAdapter::Load(aname, PeftDir(name) + "/" + rel.get<std::string>(),
                                                            *model_, lora_->BaseWeightFn(), AdapterLoadOptions()));
    }
    KvCache cache(model_->config(), model_->options());
    std::vector<SequenceInput> batch;
    std::vector<AdapterPtr> adapters;
    int64_t i = 0;
    for (const Json& row : c.json["adapter_names_per_row"]) {
      ASSERT_OK(cache.AddSequence(i));
      batch.push_back({i, c.prompts[i]});
      adapters.push_back(row == "__base__" ? nullptr : loaded.at(row.get<std::string>()));
      ++i;
    }
    ASSERT_OK_AND_ASSIGN(at::Tensor all, lora_->Forward(batch, adapters, &cache, LogitsMode::kAll));
    int64_t off = 0;
    for (size_t r = 0; r < batch.size(); ++r) {
      const int64_t n = static_cast<int64_t>(batch[r].tokens.size());
      // A row's bound is its adapter case's recommended atol where that is looser (1e-3 for the
      // deliberately strong all_linear_r8_rslora: OpenBLAS kernels other than the CI machines'
      // put its mixed-batch row at ~1.5e-4).
      const std::string row = c.json["adapter_names_per_row"][r].get<std::string>();
      const double atol = row == "__base__" ? c.atol : std::max(c.atol, LoadCase(row).atol);
      EXPECT_LE(Excess(all.narrow(0, off, n), c.expected.at("logits.row" + std::to_string(r))), atol) << "row " << r;
      off += n;
    }
  }
}

// One ragged batch over every public adapter (DoRA, embedding, modules_to_save, lora_bias
// included) plus base rows, prompts of different lengths: each row equals its case's PEFT logits.
TEST_F(LoraFixtureTest, RaggedMixedBatchOverAllAdapters) {
  KvCache cache(model_->config(), model_->options());
  std::vector<SequenceInput> batch;
  std::vector<AdapterPtr> adapters;
  std::vector<at::Tensor> want;
  std::vector<double> atol;
  int64_t id = 0;
  for (const std::string& name : kSingleCases) {
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    const size_t p = static_cast<size_t>(id % 3);
    for (bool base : {false, true}) {
      if (base && id % 4 != 0) continue;
      ASSERT_OK(cache.AddSequence(id));
      batch.push_back({id, c.prompts[p]});
      adapters.push_back(base ? nullptr : a);
      want.push_back(c.expected.at((base ? "logits.base.p" : "logits.adapter.p") + std::to_string(p)));
      atol.push_back(c.atol);
      ++id;
    }
  }
  ASSERT_OK_AND_ASSIGN(at::Tensor all, lora_->Forward(batch, adapters, &cache, LogitsMode::kAll));
  int64_t off = 0;
  for (size_t r = 0; r < batch.size(); ++r) {
    const int64_t n = static_cast<int64_t>(batch[r].tokens.size());
    EXPECT_LE(Excess(all.narrow(0, off, n), want[r]), atol[r]) << "row " << r;
    off += n;
  }
}

TEST_F(LoraFixtureTest, ValidationErrorsNameTheProblem) {
  const std::string dir = testing::MakeTempDir();
  ASSERT_OK_AND_ASSIGN(auto tensors, LoadSafetensors(PeftDir("qv_r4") + "/adapter/adapter_model.safetensors"));
  ASSERT_OK_AND_ASSIGN(Json cfg_json, ReadJsonFile(PeftDir("qv_r4") + "/adapter/adapter_config.json"));
  ASSERT_OK_AND_ASSIGN(LoraConfig cfg, LoraConfig::FromJson(cfg_json, "cfg"));
  auto build = [&](const std::map<std::string, at::Tensor>& t, const LoraConfig& c) {
    return LoraAdapter::FromTensors("x", c, t, *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
  };
  EXPECT_OK(build(tensors, cfg).status());
  {  // a targeted module without keys
    auto t = tensors;
    t.erase("base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight");
    t.erase("base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight");
    EXPECT_THAT(build(t, cfg), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("model.layers.2.self_attn.q_proj")));
  }
  {  // a key for a module the config does not target
    auto t = tensors;
    t["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = at::zeros({4, 64});
    t["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"] = at::zeros({172, 4});
    EXPECT_THAT(build(t, cfg), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not target")));
  }
  {  // a key matching no base module
    auto t = tensors;
    t["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = at::zeros({4, 64});
    EXPECT_THAT(build(t, cfg), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("matches no module")));
  }
  {  // shape mismatch
    auto t = tensors;
    t["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = at::zeros({64, 4});
    EXPECT_THAT(build(t, cfg), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shape")));
  }
  {  // NaN
    auto t = tensors;
    at::Tensor bad = t["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].clone();
    bad[0][0] = std::numeric_limits<float>::quiet_NaN();
    t["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = bad;
    EXPECT_THAT(build(t, cfg), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  }
  {  // rank above max_rank
    AdapterLoadOptions small;
    small.max_rank = 2;
    EXPECT_THAT(LoraAdapter::FromTensors("x", cfg, tensors, *model_, lora_->BaseWeightFn(), small),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_rank")));
  }
  {  // inits that need a modified base
    Json j = cfg_json;
    j["init_lora_weights"] = "pissa";
    EXPECT_THAT(LoraConfig::FromJson(j, "cfg"), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("pissa")));
    j = cfg_json;
    j["peft_type"] = "IA3";
    EXPECT_THAT(LoraConfig::FromJson(j, "cfg"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("IA3")));
  }
  // One namespace prefix (a tenant's) is allowed; nothing else with a slash.
  EXPECT_OK(ValidateAdapterName("tenant/name"));
  for (const char* bad : {"a/b/c", "/name", "name/", "../x", "x/..", "a b", ".."}) {
    EXPECT_THAT(ValidateAdapterName(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_THAT(ValidateAdapterName(std::string(129, 'a')), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_OK(ValidateAdapterName("Good-name_1.0"));
  EXPECT_THAT(LoraAdapter::Load("x", dir, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(WriteFileAtomically(dir + "/adapter_config.json", cfg_json.dump()));
  ASSERT_OK(WriteFileAtomically(dir + "/adapter_model.bin", "pickle"));
  EXPECT_THAT(LoraAdapter::Load("x", dir, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapter_model.bin")));
}

TEST_F(LoraFixtureTest, SafeMergeRefusesNonFiniteAndLeavesModelUntouched) {
  ASSERT_OK_AND_ASSIGN(auto tensors, LoadSafetensors(PeftDir("qv_r4") + "/adapter/adapter_model.safetensors"));
  ASSERT_OK_AND_ASSIGN(Json cfg_json, ReadJsonFile(PeftDir("qv_r4") + "/adapter/adapter_config.json"));
  ASSERT_OK_AND_ASSIGN(LoraConfig cfg, LoraConfig::FromJson(cfg_json, "cfg"));
  // Finite factors whose product overflows fp32.
  tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] = at::full({4, 64}, 1e30f);
  tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"] = at::full({64, 4}, 1e30f);
  // Since issue 14 item 4 such an adapter is refused at load (merge's own check stays as a net).
  const at::Tensor w0 = model_->FindLinear("model.layers.0.self_attn.q_proj")->weight;
  EXPECT_THAT(LoraAdapter::FromTensors("huge", cfg, tensors, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("huge"), HasSubstr("layers.1.self_attn.q_proj"), HasSubstr("overflows"))));
  EXPECT_TRUE(model_->FindLinear("model.layers.0.self_attn.q_proj")->weight.is_same(w0));
  EXPECT_TRUE(lora_->MergedNames().empty());
}

TEST_F(LoraFixtureTest, SaveRoundTripsAnAdapter) {
  for (const std::string& name : {std::string("dora_qv"), std::string("embed_lora"), std::string("patterns"),
                                  std::string("modules_to_save_head"), std::string("lora_bias")}) {
    SCOPED_TRACE(name);
    Case c = LoadCase(name);
    ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load(name));
    const std::string out = testing::MakeTempDir();
    ASSERT_OK(SaveAdapter(*a, out));
    ASSERT_OK_AND_ASSIGN(AdapterPtr b, LoraAdapter::Load("copy", out, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()));
    ASSERT_EQ(a->modules().size(), b->modules().size());
    for (size_t i = 0; i < a->modules().size(); ++i) {
      EXPECT_NEAR(a->modules()[i].scaling, b->modules()[i].scaling, 1e-9);
      EXPECT_TRUE(at::equal(a->modules()[i].a, b->modules()[i].a));
      EXPECT_TRUE(at::equal(a->modules()[i].b, b->modules()[i].b));
    }
    EXPECT_LE(Excess(ScoreOrDie(c.prompts[0], b), c.expected.at("logits.adapter.p0")), c.atol);
  }
}

// ---- Beyond PEFT ----

// Random adapters on q/k/v/o/gate of the real model, ranks 4..64.
AdapterPtr RandomAdapter(const Model& model, const LoraModel& lora, int seed, int64_t rank, bool dora) {
  at::manual_seed(seed);
  LoraConfig cfg;
  cfg.r = rank;
  cfg.lora_alpha = 2.0 * rank;
  cfg.use_dora = dora;
  cfg.target_list = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"};
  std::map<std::string, at::Tensor> t;
  for (const LinearModule& lm : model.linears()) {
    if (!cfg.Targets(lm.name, true, lm.name == "lm_head")) continue;
    const std::string p = std::string(kPeftPrefix) + lm.name;
    t[p + ".lora_A.weight"] = at::randn({rank, lm.in_features}) * 0.1;
    t[p + ".lora_B.weight"] = at::randn({lm.out_features, rank}) * 0.05;
    if (dora) t[p + ".lora_magnitude_vector"] = lm.weight.norm(2, {1}) * (1 + 0.1 * at::rand({lm.out_features}));
  }
  return *LoraAdapter::FromTensors("rand" + std::to_string(seed), cfg, t, model, lora.BaseWeightFn(),
                                   AdapterLoadOptions());
}

TEST_F(LoraFixtureTest, MixedBatchOf64RowsOver32AdaptersMatchesRowByRow) {
  std::vector<AdapterPtr> pool;
  const int64_t ranks[] = {4, 8, 16, 32, 64};
  for (int i = 0; i < 32; ++i) pool.push_back(RandomAdapter(*model_, *lora_, 100 + i, ranks[i % 5], i % 7 == 3));
  KvCache cache(model_->config(), model_->options());
  std::vector<SequenceInput> batch;
  std::vector<AdapterPtr> adapters;
  at::manual_seed(7);
  for (int64_t r = 0; r < 64; ++r) {
    const int64_t len = 3 + (r * 5) % 17;
    at::Tensor ids = at::randint(3, 512, {len}, at::kInt);
    batch.push_back({r, std::vector<int32_t>(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + len)});
    adapters.push_back(r % 9 == 8 ? nullptr : pool[(r * 7) % 32]);
    ASSERT_OK(cache.AddSequence(r));
  }
  ASSERT_OK_AND_ASSIGN(at::Tensor all, lora_->Forward(batch, adapters, &cache, LogitsMode::kAll));
  int64_t off = 0;
  for (size_t r = 0; r < batch.size(); ++r) {
    const int64_t n = static_cast<int64_t>(batch[r].tokens.size());
    at::Tensor single = ScoreOrDie(batch[r].tokens, adapters[r]);
    EXPECT_LE((all.narrow(0, off, n) - single).abs().max().item<double>(), 1e-4) << "row " << r;
    off += n;
  }
}

TEST_F(LoraFixtureTest, MergedRandomDoraKeepsOtherRowsExact) {
  AdapterPtr dora = RandomAdapter(*model_, *lora_, 1, 8, true);
  AdapterPtr plain = RandomAdapter(*model_, *lora_, 2, 16, false);
  const std::vector<int32_t> ids = {1, 274, 287, 381, 261, 370, 352, 266};
  at::Tensor base = ScoreOrDie(ids, nullptr), d = ScoreOrDie(ids, dora), p = ScoreOrDie(ids, plain);
  ASSERT_OK(lora_->Merge(dora).status());
  EXPECT_THAT(lora_->Merge(plain), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_LE((ScoreOrDie(ids, nullptr) - base).abs().max().item<double>(), 1e-4);
  EXPECT_LE((ScoreOrDie(ids, dora) - d).abs().max().item<double>(), 1e-4);
  EXPECT_LE((ScoreOrDie(ids, plain) - p).abs().max().item<double>(), 1e-4);
  ASSERT_OK(lora_->Unmerge(dora->name()));
}

TEST_F(LoraFixtureTest, SeveralMergedAtOnceUnmergeAnyOrder) {
  ASSERT_OK_AND_ASSIGN(AdapterPtr a, Load("qv_r4"));
  ASSERT_OK_AND_ASSIGN(AdapterPtr b, Load("qv_r4_b"));
  ASSERT_OK_AND_ASSIGN(AdapterPtr e, Load("embed_lora"));
  ASSERT_OK_AND_ASSIGN(AdapterPtr h, Load("modules_to_save_head"));
  Case ca = LoadCase("qv_r4"), cb = LoadCase("qv_r4_b"), ce = LoadCase("embed_lora"), ch = LoadCase("modules_to_save_head");
  for (const auto& x : {a, b, e, h}) ASSERT_OK(lora_->Merge(x).status());
  EXPECT_EQ(lora_->MergedNames().size(), 4u);
  auto check = [&]() {
    EXPECT_LE(Excess(ScoreOrDie(ca.prompts[1], a), ca.expected.at("logits.adapter.p1")), 1e-4);
    EXPECT_LE(Excess(ScoreOrDie(cb.prompts[1], b), cb.expected.at("logits.adapter.p1")), 1e-4);
    EXPECT_LE(Excess(ScoreOrDie(ce.prompts[1], e), ce.expected.at("logits.adapter.p1")), 1e-4);
    EXPECT_LE(Excess(ScoreOrDie(ch.prompts[1], h), ch.expected.at("logits.adapter.p1")), 1e-4);
    EXPECT_LE(Excess(ScoreOrDie(ca.prompts[1], nullptr), ca.expected.at("logits.base.p1")), 1e-4);
  };
  check();
  ASSERT_OK(lora_->Unmerge("embed_lora"));
  check();
  ASSERT_OK(lora_->Unmerge("qv_r4"));
  check();
  lora_->UnmergeAll();
  check();
  EXPECT_TRUE(model_->head_tied());
}

TEST(LoraBitExactTest, BaseIsBitExactAfter100MergeCycles) {
  LORASERVE_REQUIRE_SHARED();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    ModelOptions opts;
    opts.dtype = dtype;
    ASSERT_OK_AND_ASSIGN(auto model, Model::Load(testing::SharedPath("fixtures/models/stories260K"), opts));
    LoraModel lora(model.get());
    std::vector<at::Tensor> before;
    for (const LinearModule& lm : model->linears()) before.push_back(lm.weight.clone());
    const at::Tensor embed = model->embedding().clone();
    std::vector<AdapterPtr> adapters;
    for (const char* c : {"all_linear_r8_rslora", "dora_qv", "embed_lora", "modules_to_save_head", "lora_bias"}) {
      ASSERT_OK_AND_ASSIGN(AdapterPtr a, LoraAdapter::Load(c, PeftDir(c) + "/adapter", *model,
                                                           lora.BaseWeightFn(), AdapterLoadOptions()));
      adapters.push_back(a);
    }
    for (int cycle = 0; cycle < 100; ++cycle) {
      const AdapterPtr& a = adapters[cycle % adapters.size()];
      ASSERT_OK(lora.Merge(a).status());
      ASSERT_OK(lora.Unmerge(a->name()));
    }
    for (size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(at::equal(model->linears()[i].weight, before[i])) << model->linears()[i].name;
      EXPECT_FALSE(model->linears()[i].bias.defined()) << model->linears()[i].name;
    }
    EXPECT_TRUE(at::equal(model->embedding(), embed));
    EXPECT_TRUE(model->head_tied());
  }
}

}  // namespace
}  // namespace loraserve::core

namespace loraserve::core {
namespace {

// bias="all": an adapter's saved biases replace the checkpoint's for its rows only. Checked
// against a second code path: a model whose biases are the saved ones, with the same LoRA.
TEST(LoraBiasOverrideTest, SavedBiasesReplaceTheCheckpointsForTheirRows) {
  LORASERVE_REQUIRE_SHARED();
  const std::string dir = testing::SharedPath("fixtures/models/stories260K");
  ASSERT_OK_AND_ASSIGN(auto tensors, LoadSafetensors(dir + "/model.safetensors"));
  ASSERT_OK_AND_ASSIGN(Json json, ReadJsonFile(dir + "/config.json"));
  json["model_type"] = "qwen2";
  ASSERT_OK_AND_ASSIGN(ModelConfig cfg, ModelConfig::FromJson(json, "qwen2"));
  at::manual_seed(5);
  auto base_tensors = tensors;
  auto swapped_tensors = tensors;
  std::map<std::string, at::Tensor> adapter_tensors;
  for (int l = 0; l < 5; ++l) {
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn." + p;
      const int64_t out = tensors[name + ".weight"].size(0);
      base_tensors[name + ".bias"] = at::randn({out}) * 0.3;
      swapped_tensors[name + ".bias"] = base_tensors[name + ".bias"];
      if (l % 2 == 0) {  // the adapter saves new biases for even layers
        at::Tensor saved = at::randn({out}) * 0.3;
        swapped_tensors[name + ".bias"] = saved;
        adapter_tensors[std::string(kPeftPrefix) + name + (l == 0 ? ".base_layer.bias" : ".bias")] = saved;
      }
    }
  }
  ASSERT_OK_AND_ASSIGN(auto lora_src, LoadSafetensors(testing::PeftDir("qv_r4") + "/adapter/adapter_model.safetensors"));
  for (const auto& [k, v] : lora_src) adapter_tensors[k] = v;
  ASSERT_OK_AND_ASSIGN(Json acfg_json, ReadJsonFile(testing::PeftDir("qv_r4") + "/adapter/adapter_config.json"));
  ASSERT_OK_AND_ASSIGN(LoraConfig plain_cfg, LoraConfig::FromJson(acfg_json, "cfg"));
  acfg_json["bias"] = "all";
  ASSERT_OK_AND_ASSIGN(LoraConfig acfg, LoraConfig::FromJson(acfg_json, "cfg"));

  ASSERT_OK_AND_ASSIGN(auto model, Model::FromTensors(cfg, base_tensors, ModelOptions(), "qwen2"));
  LoraModel lora(model.get());
  ASSERT_OK_AND_ASSIGN(auto swapped, Model::FromTensors(cfg, swapped_tensors, ModelOptions(), "swapped"));
  LoraModel swapped_lora(swapped.get());
  EXPECT_THAT(LoraAdapter::FromTensors("b", plain_cfg, adapter_tensors, *model, lora.BaseWeightFn(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bias=\"none\"")));
  ASSERT_OK_AND_ASSIGN(AdapterPtr a, LoraAdapter::FromTensors("b", acfg, adapter_tensors, *model,
                                                              lora.BaseWeightFn(), {}));
  EXPECT_TRUE(a->has_bias_override());
  ASSERT_OK_AND_ASSIGN(AdapterPtr plain, LoraAdapter::FromTensors("p", plain_cfg, lora_src, *swapped,
                                                                  swapped_lora.BaseWeightFn(), {}));
  const std::vector<int32_t> ids = {1, 274, 287, 381, 261, 370, 352, 266};
  ASSERT_OK_AND_ASSIGN(at::Tensor want, swapped_lora.Score(ids, plain));
  ASSERT_OK_AND_ASSIGN(at::Tensor base, lora.Score(ids, nullptr));
  // Mixed batch: adapter rows get the saved biases, base rows the checkpoint's.
  KvCache cache(model->config(), model->options());
  ASSERT_OK(cache.AddSequence(0));
  ASSERT_OK(cache.AddSequence(1));
  ASSERT_OK_AND_ASSIGN(at::Tensor both, lora.Forward({{0, ids}, {1, ids}}, {a, nullptr}, &cache, LogitsMode::kAll));
  EXPECT_LE((both.narrow(0, 0, 8) - want).abs().max().item<double>(), 1e-4);
  EXPECT_LE((both.narrow(0, 8, 8) - base).abs().max().item<double>(), 1e-4);
  // Merged: same answers; unmerged: the checkpoint's biases bit for bit.
  const at::Tensor q0_bias = model->FindLinear("model.layers.0.self_attn.q_proj")->bias;
  ASSERT_OK(lora.Merge(a).status());
  ASSERT_OK_AND_ASSIGN(at::Tensor merged, lora.Score(ids, a));
  ASSERT_OK_AND_ASSIGN(at::Tensor base_while_merged, lora.Score(ids, nullptr));
  EXPECT_LE((merged - want).abs().max().item<double>(), 1e-4);
  EXPECT_LE((base_while_merged - base).abs().max().item<double>(), 1e-4);
  ASSERT_OK(lora.Unmerge("b"));
  EXPECT_TRUE(model->FindLinear("model.layers.0.self_attn.q_proj")->bias.is_same(q0_bias));
  // Saved in PEFT layout and reloaded, it still carries the biases.
  const std::string out = testing::MakeTempDir();
  ASSERT_OK(SaveAdapter(*a, out));
  ASSERT_OK_AND_ASSIGN(AdapterPtr again, LoraAdapter::Load("again", out, *model, lora.BaseWeightFn(), {}));
  ASSERT_OK_AND_ASSIGN(at::Tensor reloaded, lora.Score(ids, again));
  EXPECT_LE((reloaded - want).abs().max().item<double>(), 1e-4);
  // An export folds them in.
  const std::string exported = testing::MakeTempDir();
  ASSERT_OK(lora.ExportMerged({a}, exported));
  ASSERT_OK_AND_ASSIGN(auto plain_model, Model::Load(exported, ModelOptions()));
  ASSERT_OK_AND_ASSIGN(at::Tensor from_export, plain_model->Score(ids));
  EXPECT_LE((from_export - want).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace loraserve::core
