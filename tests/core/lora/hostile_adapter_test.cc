// Hostile adapters (issue 14 item 4): a scaling that is not finite or too large for the float
// kernels, rank_pattern / alpha_pattern entries that produce one, weights with NaN/Inf, deltas that
// overflow the compute dtype, DoRA with a zero weight norm: each refused at load with
// InvalidArgument naming the field; a sane adapter on the same model still loads and scores finite.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

class HostileAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto made = MakeDemoModel(ModelMakerOptions());
    ASSERT_OK(made.status());
    auto model = Model::FromTensors(made->config, made->tensors, ModelOptions(), "tiny");
    ASSERT_OK(model.status());
    model_ = std::move(*model);
    lora_ = std::make_unique<LoraModel>(model_.get());
    cfg_.r = 4;
    cfg_.lora_alpha = 8;
    cfg_.target_list = {"q_proj", "v_proj"};
  }
  // lora_A/lora_B for every targeted module, scaled by `a_scale`, `b_scale`.
  std::map<std::string, at::Tensor> Weights(double a_scale = 0.1, double b_scale = 0.1) {
    std::map<std::string, at::Tensor> t;
    at::manual_seed(1);
    for (const LinearModule& lm : model_->linears()) {
      if (!cfg_.Targets(lm.name, true, lm.name == "lm_head")) continue;
      const std::string p = std::string(kPeftPrefix) + lm.name;
      t[p + ".lora_A.weight"] = at::randn({cfg_.RankFor(lm.name), lm.in_features}) * a_scale;
      t[p + ".lora_B.weight"] = at::randn({lm.out_features, cfg_.RankFor(lm.name)}) * b_scale;
    }
    return t;
  }
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> Load(const std::map<std::string, at::Tensor>& t) {
    return LoraAdapter::FromTensors("hostile", cfg_, t, *model_, lora_->BaseWeightFn(), AdapterLoadOptions());
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
  LoraConfig cfg_;
};

TEST_F(HostileAdapterTest, SaneAdapterLoadsAndScoresFinite) {
  ASSERT_OK_AND_ASSIGN(auto a, Load(Weights()));
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(std::vector<int32_t>{1, 5, 9}, a));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
}

TEST_F(HostileAdapterTest, HugeLoraAlphaIsRefusedEvenWithZeroB) {
  cfg_.lora_alpha = 1e308;
  EXPECT_THAT(Load(Weights()), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("lora_alpha 1e+308"), HasSubstr("above 1e30"))));
  EXPECT_THAT(Load(Weights(0.1, 0.0)), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lora_alpha")));
}

TEST_F(HostileAdapterTest, NonFiniteScalingFromPatternsIsRefused) {
  cfg_.alpha_pattern = {{"q_proj", 1e308}};
  cfg_.rank_pattern = {{"q_proj", 1}};
  cfg_.use_rslora = false;
  EXPECT_THAT(Load(Weights()), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("q_proj"), HasSubstr("alpha_pattern"))));
  cfg_.alpha_pattern = {{"v_proj", std::numeric_limits<double>::infinity()}};
  cfg_.rank_pattern.clear();
  EXPECT_THAT(Load(Weights()), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("v_proj"), HasSubstr("not finite"))));
}

TEST_F(HostileAdapterTest, OverflowingDeltaIsRefused) {
  // Scaling 2, weights of 1e18: |s·B·A| reaches ~1e37 per unit activation.
  EXPECT_THAT(Load(Weights(1e18, 1e18)), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflows")));
  cfg_.r = 256;
  cfg_.lora_alpha = 1e31;  // huge rank times a huge alpha: scaling 3.9e28 (under 1e30), gain ~1e31
  EXPECT_THAT(Load(Weights()), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflows")));
}

TEST_F(HostileAdapterTest, NonFiniteWeightsAreRefusedByName) {
  auto t = Weights();
  const std::string key = std::string(kPeftPrefix) + "model.layers.1.self_attn.v_proj.lora_B.weight";
  ASSERT_TRUE(t.count(key));
  t[key][0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(Load(t), StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("model.layers.1.self_attn.v_proj.lora_B"), HasSubstr("NaN or Inf"))));
}

// The load-time scan reads values in 16- and 8-wide blocks and a scalar tail (AVX2 where the CPU
// has it): a NaN or Inf anywhere, in either storage dtype, is found. Ranks 20 and 24 put lora_B's
// rows (r columns) into block + tail and block + 8-block shapes; lora_A's rows are 64 wide.
TEST_F(HostileAdapterTest, NonFiniteWeightsAreFoundAtEveryPositionAndDtype) {
  const std::string v1 = std::string(kPeftPrefix) + "model.layers.1.self_attn.v_proj";
  for (const char* dtype : {"float32", "bfloat16"}) {
    for (const int64_t r : {20, 24}) {
      cfg_.r = r;
      cfg_.lora_alpha = 2 * r;
      AdapterLoadOptions options;
      options.dtype = dtype;
      auto load = [&](const std::map<std::string, at::Tensor>& t) {
        return LoraAdapter::FromTensors("hostile", cfg_, t, *model_, lora_->BaseWeightFn(), options);
      };
      ASSERT_OK(load(Weights()).status()) << dtype << " r " << r;
      for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()}) {
        for (const int64_t col : {int64_t{0}, int64_t{15}, int64_t{16}, r - 1}) {
          auto t = Weights();
          t[v1 + ".lora_B.weight"][5][col] = bad;
          EXPECT_THAT(load(t), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("v_proj.lora_B"), HasSubstr("NaN or Inf"))))
              << dtype << " r " << r << " col " << col << " " << bad;
        }
        for (const int64_t col : {int64_t{0}, int64_t{9}, int64_t{63}}) {
          auto t = Weights();
          t[v1 + ".lora_A.weight"][r - 1][col] = bad;
          EXPECT_THAT(load(t), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("v_proj.lora_A"), HasSubstr("NaN or Inf"))))
              << dtype << " r " << r << " col " << col << " " << bad;
        }
      }
    }
  }
}

TEST_F(HostileAdapterTest, DoraWithAZeroWeightNormIsRefused) {
  // W + s·B·A = 0 on row 0 of layer 0's q_proj: B·A = −W/s there, so the DoRA norm is 0.
  cfg_.use_dora = true;
  cfg_.target_list = {"q_proj"};
  auto t = Weights();
  const LinearModule* q = model_->FindLinear("model.layers.0.self_attn.q_proj");
  ASSERT_NE(q, nullptr);
  const std::string p = std::string(kPeftPrefix) + q->name;
  const int64_t in = q->in_features, out = q->out_features;
  at::Tensor a = at::zeros({4, in});
  a.narrow(0, 0, 1).copy_(-q->weight.narrow(0, 0, 1).to(at::kFloat) / cfg_.ScalingFor(q->name));
  at::Tensor b = at::zeros({out, 4});
  b[0][0] = 1.0;
  t[p + ".lora_A.weight"] = a;
  t[p + ".lora_B.weight"] = b;
  for (const LinearModule& lm : model_->linears()) {
    if (cfg_.Targets(lm.name, true, false)) {
      t[std::string(kPeftPrefix) + lm.name + ".lora_magnitude_vector"] = at::ones({lm.out_features});
    }
  }
  EXPECT_THAT(Load(t), StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("q_proj"), HasSubstr("DoRA scale contains NaN or Inf"))));
}

TEST_F(HostileAdapterTest, RunTimeOverflowFailsThatRequestInsteadOfReturningNaN) {
  // Each delta is under the load-time bound (gain ~1e26), but gate·up multiplies two of them:
  // inf in the MLP, NaN after down_proj. Score fails with Internal; the base still scores.
  cfg_.target_list = {"gate_proj", "up_proj"};
  cfg_.lora_alpha = 4e22;  // scaling 1e22
  ASSERT_OK_AND_ASSIGN(auto a, Load(Weights(1.0, 1.0)));
  const std::vector<int32_t> ids = {1, 74, 87, 181, 61};
  EXPECT_THAT(lora_->Score(ids, a), StatusIs(absl::StatusCode::kInternal,
                                             AllOf(HasSubstr("non-finite logits"), HasSubstr("hostile"))));
  ASSERT_OK_AND_ASSIGN(at::Tensor base, lora_->Score(ids, nullptr));
  EXPECT_TRUE(at::isfinite(base).all().item<bool>());
}

}  // namespace
}  // namespace loraserve::core
