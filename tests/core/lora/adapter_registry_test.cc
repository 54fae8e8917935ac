#include "core/lora/adapter_registry.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <random>
#include <thread>

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/lora/lora_combine.h"
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

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LORASERVE_REQUIRE_SHARED();
    ASSERT_OK_AND_ASSIGN(model_, Model::Load(testing::SharedPath("fixtures/models/stories260K"), ModelOptions()));
    lora_ = std::make_unique<LoraModel>(model_.get());
  }
  std::unique_ptr<AdapterRegistry> Make(int64_t budget) {
    AdapterRegistryOptions o;
    o.budget_bytes = budget;
    return std::make_unique<AdapterRegistry>(*model_, lora_->BaseWeightFn(), o);
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<LoraModel> lora_;
};

TEST_F(RegistryTest, LoadGetDeleteAndErrors) {
  auto reg = Make(0);
  ASSERT_OK_AND_ASSIGN(AdapterInfo info, reg->Load("a", PeftDir("qv_r4") + "/adapter"));
  EXPECT_EQ(info.name, "a");
  EXPECT_TRUE(info.resident);
  EXPECT_EQ(info.max_rank, 4);
  EXPECT_EQ(info.target_modules.size(), 10u);
  EXPECT_GT(info.bytes, 0);
  // The fixtures were trained against "models/stories260K": no mismatch warning for our model.
  EXPECT_TRUE(info.warnings.empty());
  EXPECT_THAT(reg->Load("a", PeftDir("qv_r4_b") + "/adapter"), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(reg->Load("bad name", PeftDir("qv_r4_b") + "/adapter"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(reg->Load("b", "/nonexistent"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(reg->Contains("b"));
  EXPECT_THAT(reg->Get("zzz"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(auto held, reg->Get("a"));
  ASSERT_OK(reg->SetPinned("a", true));
  EXPECT_THAT(reg->Delete("a"), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("merged")));
  ASSERT_OK(reg->SetPinned("a", false));
  ASSERT_OK(reg->Delete("a"));
  EXPECT_THAT(reg->Delete("a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(reg->resident_bytes(), 0);
  // A deleted adapter still serves the forward that holds it.
  PeftCase c = LoadPeftCase("qv_r4");
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(c.prompts[0], held));
  EXPECT_LE(AllcloseExcess(logits, c.expected.at("logits.adapter.p0")), c.atol);
}

TEST_F(RegistryTest, WarnsOnBaseModelMismatch) {
  auto reg = Make(0);
  const std::string dir = testing::MakeTempDir();
  ASSERT_OK_AND_ASSIGN(auto a, LoraAdapter::Load("x", PeftDir("qv_r4") + "/adapter", *model_, lora_->BaseWeightFn(), {}));
  ASSERT_OK(SaveAdapter(*a, dir));
  // Rewrite the recorded base model.
  ASSERT_OK_AND_ASSIGN(Json cfg, ReadJsonFile(dir + "/adapter_config.json"));
  cfg["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf";
  ASSERT_OK(WriteFileAtomically(dir + "/adapter_config.json", cfg.dump()));
  ASSERT_OK_AND_ASSIGN(AdapterInfo info, reg->Load("x", dir));
  ASSERT_EQ(info.warnings.size(), 1u);
  EXPECT_THAT(info.warnings[0], HasSubstr("Llama-2-7b-hf"));
}

// Budget smaller than the adapters in use: LRU eviction and transparent reload, same answers.
TEST_F(RegistryTest, EvictsAndReloadsUnderABudget) {
  const std::vector<std::string> cases = {"qv_r4", "qv_r4_b", "patterns", "regex_target", "all_linear_r8_rslora"};
  auto probe = Make(0);
  int64_t largest = 0;
  for (const auto& c : cases) {
    ASSERT_OK_AND_ASSIGN(AdapterInfo i, probe->Load(c, PeftDir(c) + "/adapter"));
    largest = std::max(largest, i.bytes);
  }
  auto reg = Make(largest + 1);  // room for one adapter at a time
  for (const auto& c : cases) ASSERT_OK(reg->Load(c, PeftDir(c) + "/adapter").status());
  EXPECT_LE(reg->resident_bytes(), largest + 1);
  EXPECT_GE(reg->evictions(), static_cast<int64_t>(cases.size()) - 1);
  for (int round = 0; round < 2; ++round) {
    for (const auto& c : cases) {
      PeftCase pc = LoadPeftCase(c);
      ASSERT_OK_AND_ASSIGN(auto a, reg->Get(c));
      ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(pc.prompts[1], a));
      EXPECT_LE(AllcloseExcess(logits, pc.expected.at("logits.adapter.p1")), pc.atol) << c;
      EXPECT_LE(reg->resident_bytes(), largest + 1);
    }
  }
  EXPECT_GE(reg->reloads(), 2 * static_cast<int64_t>(cases.size()) - 1);
  int resident = 0;
  for (const AdapterInfo& i : reg->List()) resident += i.resident ? 1 : 0;
  EXPECT_EQ(resident, 1);
}

TEST_F(RegistryTest, CombinedAdaptersSpillToDiskWhenEvicted) {
  auto reg = Make(1);  // everything but the newest is evicted
  ASSERT_OK_AND_ASSIGN(auto a, LoraAdapter::Load("a", PeftDir("qv_r4") + "/adapter", *model_, lora_->BaseWeightFn(), {}));
  ASSERT_OK_AND_ASSIGN(auto b, LoraAdapter::Load("b", PeftDir("qv_r4_b") + "/adapter", *model_, lora_->BaseWeightFn(), {}));
  CombineOptions opts;
  opts.type = CombinationType::kCat;
  opts.weights = {0.7, 0.3};
  ASSERT_OK_AND_ASSIGN(auto combined, CombineAdapters("cat", {a, b}, opts, *model_, lora_->BaseWeightFn(), {}));
  ASSERT_OK(reg->Add(combined).status());
  ASSERT_OK(reg->Load("other", PeftDir("patterns") + "/adapter").status());
  ASSERT_OK_AND_ASSIGN(AdapterInfo info, reg->Info("cat"));
  EXPECT_FALSE(info.resident);
  EXPECT_FALSE(info.source_dir.empty());
  ASSERT_OK_AND_ASSIGN(auto again, reg->Get("cat"));
  PeftCase pc = LoadPeftCase("multi/weighted/cat_w07_03");
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, lora_->Score(pc.prompts[0], again));
  EXPECT_LE(AllcloseExcess(logits, pc.expected.at("logits.p0")), pc.atol);
}

TEST_F(RegistryTest, ConcurrentGetsUnderEvictionAreSafe) {
  auto reg = Make(1);
  const std::vector<std::string> cases = {"qv_r4", "qv_r4_b", "patterns"};
  for (const auto& c : cases) ASSERT_OK(reg->Load(c, PeftDir(c) + "/adapter").status());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        auto a = reg->Get(cases[(t + i) % cases.size()]);
        if (!a.ok() || *a == nullptr) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// Registered-only entries hold no weights; 10,000 of them under a budget of a few adapters stay
// within the budget while a random sample of them is used, and the entries themselves are small.
TEST_F(RegistryTest, TenThousandRegisteredAdaptersInBoundedMemory) {
  ASSERT_OK_AND_ASSIGN(auto one, LoraAdapter::Load("x", PeftDir("qv_r4") + "/adapter", *model_, lora_->BaseWeightFn(), {}));
  const int64_t budget = 4 * one->bytes();
  auto reg = Make(budget);
  const std::string dir = PeftDir("qv_r4") + "/adapter";
  const absl::Time start = absl::Now();
  constexpr int kAdapters = 10000;
  for (int i = 0; i < kAdapters; ++i) {
    ASSERT_OK_AND_ASSIGN(AdapterInfo info, reg->Load("t" + std::to_string(i), dir, /*register_only=*/true));
    ASSERT_FALSE(info.resident);
    ASSERT_TRUE(info.registered_only);
  }
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(reg->size(), kAdapters);
  EXPECT_EQ(reg->resident_bytes(), 0);
  AdapterCounts c = reg->Counts();
  EXPECT_EQ(c.not_loaded, kAdapters);
  ASSERT_OK_AND_ASSIGN(auto absent, reg->GetIfResident("t7"));
  EXPECT_EQ(absent, nullptr);
  // Zipf-like use of a sample: the budget holds at every step.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pick(0, kAdapters - 1);
  for (int k = 0; k < 300; ++k) {
    const int i = k % 3 == 0 ? k % 5 : pick(rng);
    ASSERT_OK_AND_ASSIGN(auto a, reg->Get("t" + std::to_string(i)));
    ASSERT_NE(a, nullptr);
    ASSERT_LE(reg->resident_bytes(), budget);
    ASSERT_OK_AND_ASSIGN(auto again, reg->GetIfResident("t" + std::to_string(i)));
    EXPECT_EQ(again, a);
  }
  c = reg->Counts();
  EXPECT_LE(c.resident, 4);
  EXPECT_GT(c.evicted, 0);
  EXPECT_EQ(c.resident + c.evicted + c.not_loaded, kAdapters);
  EXPECT_GT(reg->reloads(), 0);
  EXPECT_GT(reg->reload_seconds(), 0);
  // Deleting works for every state.
  ASSERT_OK(reg->Delete("t9999"));
  ASSERT_OK(reg->Delete("t0"));
  EXPECT_EQ(reg->size(), kAdapters - 2);
  // The counts kept on every transition equal a recount of the entries.
  ASSERT_OK(reg->SetPinned("t1", true));
  AdapterCounts recount;
  for (const AdapterInfo& info : reg->List()) {
    ++(info.pinned ? recount.merged : info.resident ? recount.resident : info.registered_only ? recount.not_loaded
                                                                                              : recount.evicted);
  }
  c = reg->Counts();
  EXPECT_EQ(c.merged, recount.merged);
  EXPECT_EQ(c.resident, recount.resident);
  EXPECT_EQ(c.evicted, recount.evicted);
  EXPECT_EQ(c.not_loaded, recount.not_loaded);
  EXPECT_EQ(c.merged + c.resident + c.evicted + c.not_loaded, kAdapters - 2);
  std::cout << "registered " << kAdapters << " adapters in " << absl::FormatDuration(took) << "\n";
}

TEST_F(RegistryTest, BfloatAdaptersHalveTheBytesAndKeepTheResults) {
  AdapterLoadOptions bf16;
  bf16.dtype = "bfloat16";
  ASSERT_OK_AND_ASSIGN(auto f, LoraAdapter::Load("f", PeftDir("qv_r4") + "/adapter", *model_, lora_->BaseWeightFn(), {}));
  ASSERT_OK_AND_ASSIGN(auto h, LoraAdapter::Load("h", PeftDir("qv_r4") + "/adapter", *model_, lora_->BaseWeightFn(), bf16));
  EXPECT_EQ(h->bytes() * 2, f->bytes());
  for (const LoraModule& m : h->modules()) {
    EXPECT_EQ(m.a.scalar_type(), at::kBFloat16);
    EXPECT_EQ(m.b.scalar_type(), at::kBFloat16);
  }
  // Saved as float32: a bf16 adapter written out and read back is the same adapter.
  const std::string dir = testing::MakeTempDir();
  ASSERT_OK(SaveAdapter(*h, dir));
  ASSERT_OK_AND_ASSIGN(auto back, LoraAdapter::Load("h", dir, *model_, lora_->BaseWeightFn(), bf16));
  for (size_t i = 0; i < h->modules().size(); ++i) {
    EXPECT_TRUE(at::equal(back->modules()[i].a, h->modules()[i].a));
    EXPECT_TRUE(at::equal(back->modules()[i].b, h->modules()[i].b));
  }
}

}  // namespace
}  // namespace loraserve::core
