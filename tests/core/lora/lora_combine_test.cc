// add_weighted_adapter conformance against PEFT (shared/fixtures/peft/multi) and DARE properties.
#include "core/lora/lora_combine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "core/io/file_util.h"
#include "core/io/tensor_io.h"
#include "core/lora/lora_model.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/peft_case.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::AllcloseExcess;
using ::loraserve::testing::LoadPeftCase;
using ::loraserve::testing::PeftCase;
using ::loraserve::testing::PeftDir;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;
using AdapterPtr = std::shared_ptr<const LoraAdapter>;


class CombineFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    ASSERT_OK_AND_ASSIGN(model_, Model::Load(testing::SharedPath("fixtures/models/stories260K"), ModelOptions()));
    lora_ = std::make_unique<LoraModel>(model_.get());
  }
  std::vector<AdapterPtr> Sources(const PeftCase& c, const char* key) {
    std::vector<AdapterPtr> out;
    for (const auto& [name, rel] : c.json[key].items()) {
      auto a = LoraAdapter::Load(name, PeftDir(c.name) + "/" + rel.get<std::string>(), *model_,
                                 lora_->BaseWeightFn(), AdapterLoadOptions());
      EXPECT_OK(a.status());
      if (a.ok()) out.push_back(*a);
    }
    return out;
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
};

TEST_F(CombineFixtureTest, EveryWeightedCaseMatchesPeft) {
  int cases = 0;
  std::set<std::string> types;
  for (const auto& entry : std::filesystem::directory_iterator(PeftDir("multi/weighted"))) {
    const std::string name = "multi/weighted/" + entry.path().filename().string();
    SCOPED_TRACE(name);
    PeftCase c = LoadPeftCase(name);
    std::vector<AdapterPtr> sources = Sources(c, "source_adapters");
    ASSERT_EQ(sources.size(), 2u);
    CombineOptions opts;
    ASSERT_OK_AND_ASSIGN(opts.type, ParseCombinationType(c.json["combination_type"].get<std::string>()));
    types.insert(c.json["combination_type"].get<std::string>());
    opts.weights = c.json["weights"].get<std::vector<double>>();
    const Json& kw = c.json["kwargs"];
    opts.density = kw.value("density", 1.0);
    opts.svd_rank = kw.value("svd_rank", 0);
    opts.majority_sign_method = kw.value("majority_sign_method", std::string("total"));
    ASSERT_OK_AND_ASSIGN(AdapterPtr combined, CombineAdapters("combined", sources, opts, *model_,
                                                              lora_->BaseWeightFn(), AdapterLoadOptions()));
    // The combined delta B'·A'·scaling per module equals PEFT's.
    int deltas = 0;
    for (const LoraModule& m : combined->modules()) {
      const std::string key = "delta." + m.name + ".weight";
      ASSERT_TRUE(c.expected.count(key)) << key;
      // atol 1e-5 + rtol 1e-4: the fixtures' combined-delta tolerance.
      EXPECT_LE(AllcloseExcess(m.Delta(), c.expected.at(key)), 1e-5) << key;
      ++deltas;
    }
    EXPECT_EQ(deltas, static_cast<int>(std::count_if(c.expected.begin(), c.expected.end(), [](const auto& kv) {
                return kv.first.rfind("delta.", 0) == 0;
              })));
    for (size_t i = 0; i < c.prompts.size(); ++i) {
      ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(c.prompts[i], combined));
      EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.p" + std::to_string(i))), c.atol);
    }
    // Saved like PEFT's own file: same modules and ranks, deltas within 1e-5, r = lora_alpha.
    const std::string out = testing::MakeTempDir();
    ASSERT_OK(SaveAdapter(*combined, out));
    ASSERT_OK_AND_ASSIGN(Json ours_cfg, ReadJsonFile(out + "/adapter_config.json"));
    EXPECT_EQ(ours_cfg["r"].get<double>(), ours_cfg["lora_alpha"].get<double>());
    ASSERT_OK_AND_ASSIGN(auto ours, LoadSafetensors(out + "/adapter_model.safetensors"));
    ASSERT_OK_AND_ASSIGN(auto theirs, LoadSafetensors(PeftDir(name) + "/adapter/adapter_model.safetensors"));
    ASSERT_OK_AND_ASSIGN(Json their_cfg, ReadJsonFile(PeftDir(name) + "/adapter/adapter_config.json"));
    EXPECT_EQ(ours_cfg["r"].get<int64_t>(), their_cfg["r"].get<int64_t>());
    const double their_scaling = their_cfg["lora_alpha"].get<double>() / their_cfg["r"].get<double>();
    ASSERT_EQ(ours.size(), theirs.size());
    for (const auto& [key, t] : theirs) {
      ASSERT_TRUE(ours.count(key)) << key;
      EXPECT_EQ(ours.at(key).sizes(), t.sizes()) << key;
      if (key.find(".lora_A.") == std::string::npos) continue;
      const std::string bkey = key.substr(0, key.find(".lora_A.")) + ".lora_B.weight";
      at::Tensor their_delta = at::matmul(theirs.at(bkey), t) * their_scaling;
      at::Tensor our_delta = at::matmul(ours.at(bkey), ours.at(key));
      EXPECT_LE((our_delta - their_delta).abs().max().item<double>(), 1e-5) << key;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 11);
  EXPECT_GE(types.size(), 8u);
}

// Two adapters active together in PEFT == cat with weights [1, 1]; merging it keeps the answer.
TEST_F(CombineFixtureTest, MergeTwoActiveViaCat) {
  PeftCase c = LoadPeftCase("multi/merge_two_active");
  std::vector<AdapterPtr> sources = Sources(c, "adapters_loaded");
  ASSERT_EQ(sources.size(), 2u);
  CombineOptions opts;
  opts.type = CombinationType::kCat;
  opts.weights = {1, 1};
  ASSERT_OK_AND_ASSIGN(AdapterPtr both, CombineAdapters("both", sources, opts, *model_, lora_->BaseWeightFn(),
                                                        AdapterLoadOptions()));
  for (const LoraModule& m : both->modules()) {
    EXPECT_LE((m.Delta() - c.expected.at("delta." + m.name + ".weight")).abs().max().item<double>(), 1e-5);
  }
  for (size_t i = 0; i < c.prompts.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(c.prompts[i], both));
    EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.unmerged.p" + std::to_string(i))), c.atol);
  }
  ASSERT_OK(lora_->Merge(both).status());
  for (size_t i = 0; i < c.prompts.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(c.prompts[i], both));
    EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.unmerged.p" + std::to_string(i))), c.atol);
    EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.merged.p" + std::to_string(i))), c.atol);
  }
}

TEST_F(CombineFixtureTest, RejectsInvalidCombinations) {
  auto load = [&](const std::string& c) {
    return *LoraAdapter::Load(c, PeftDir(c) + "/adapter", *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
  };
  AdapterPtr a = load("qv_r4"), p = load("patterns"), d = load("dora_qv");
  CombineOptions opts;
  opts.type = CombinationType::kLinear;
  opts.weights = {1, 1};
  EXPECT_THAT(CombineAdapters("x", {a, p}, opts, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("equal ranks")));
  opts.type = CombinationType::kSvd;
  EXPECT_OK(CombineAdapters("x", {a, p}, opts, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()).status());
  EXPECT_THAT(CombineAdapters("x", {a, d}, opts, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("DoRA")));
  opts.weights = {1};
  EXPECT_THAT(CombineAdapters("x", {a, p}, opts, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weights")));
  opts.weights = {1, 1};
  opts.density = 0;
  EXPECT_THAT(CombineAdapters("x", {a, p}, opts, *model_, lora_->BaseWeightFn(), AdapterLoadOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("density")));
  EXPECT_THAT(ParseCombinationType("average"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(CombineFixtureTest, DareIsSeededAndReproducible) {
  auto load = [&](const std::string& c) {
    return *LoraAdapter::Load(c, PeftDir(c) + "/adapter", *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
  };
  AdapterPtr a = load("qv_r4"), b = load("qv_r4_b");
  CombineOptions opts;
  opts.type = CombinationType::kDareLinear;
  opts.weights = {0.7, 0.3};
  opts.density = 0.5;
  opts.seed = 11;
  auto make = [&](uint64_t seed) {
    CombineOptions o = opts;
    o.seed = seed;
    return *CombineAdapters("dare", {a, b}, o, *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
  };
  AdapterPtr x = make(11), y = make(11), z = make(12);
  for (size_t i = 0; i < x->modules().size(); ++i) {
    EXPECT_TRUE(at::equal(x->modules()[i].a, y->modules()[i].a));
    EXPECT_TRUE(at::equal(x->modules()[i].b, y->modules()[i].b));
  }
  EXPECT_FALSE(at::equal(x->modules()[0].a, z->modules()[0].a));
}

TEST(DarePropertyTest, KeepsDensityFractionAndRescalesSurvivors) {
  at::manual_seed(3);
  at::Tensor t = at::randn({400, 300}) + 10;  // no zeros, so kept entries are the non-zero ones
  for (double density : {0.1, 0.3, 0.7}) {
    at::Generator g1 = at::make_generator<at::CPUGeneratorImpl>(5);
    at::Generator g2 = at::make_generator<at::CPUGeneratorImpl>(5);
    at::Generator g3 = at::make_generator<at::CPUGeneratorImpl>(6);
    at::Tensor p1 = PruneRandom(t, density, g1), p2 = PruneRandom(t, density, g2), p3 = PruneRandom(t, density, g3);
    at::Tensor kept = p1 != 0;
    const double frac = kept.to(at::kFloat).mean().item<double>();
    EXPECT_NEAR(frac, density, 0.01) << density;
    EXPECT_TRUE(at::allclose(p1.masked_select(kept), t.masked_select(kept) / density, 1e-6, 1e-6));
    EXPECT_TRUE(at::equal(p1, p2));
    EXPECT_FALSE(at::equal(kept, p3 != 0));
  }
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  EXPECT_TRUE(at::equal(PruneRandom(t, 1.0, g), t));
}

TEST(MagnitudePruneTest, KeepsTheLargestEntries) {
  at::Tensor t = at::tensor({0.1f, -5.0f, 2.0f, -0.3f, 4.0f, 0.0f});
  EXPECT_TRUE(at::equal(PruneMagnitude(t, 0.5), at::tensor({0.0f, -5.0f, 2.0f, 0.0f, 4.0f, 0.0f})));
  EXPECT_TRUE(at::equal(PruneMagnitude(t, 1.0), t));
}

}  // namespace
}  // namespace loraserve::core
