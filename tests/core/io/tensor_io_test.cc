// LibTorch bridge for safetensors, and the fixture identities that prove the reader reads the real
// model and every PEFT adapter correctly: values are checked by relations across *different* files
// (adapter factors vs PEFT's merged deltas vs the base checkpoint), never by reading one file twice.
#include "core/io/tensor_io.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;

std::string File(const std::string& header, const std::string& data) {
  uint64_t len = header.size();
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header + data;
}

TEST(TensorIoTest, DecodesHandWrittenF16Bf16I64) {
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[6,12]},)"
      R"("i":{"dtype":"I64","shape":[1],"data_offsets":[16,24]},)"
      R"("pad":{"dtype":"U8","shape":[4],"data_offsets":[12,16]}})";
  std::string data;
  for (int b : {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38}) data.push_back(static_cast<char>(b));  // 1,-2,.5
  for (int b : {0x80, 0x3f, 0x00, 0xc0, 0x40, 0x40}) data.push_back(static_cast<char>(b));  // 1,-2,3
  data += "pppp";
  for (int b : {0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) data.push_back(static_cast<char>(b));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::FromBytes(File(header, data), "hand"));
  ASSERT_OK_AND_ASSIGN(at::Tensor h, TensorFromSafetensors(file, *file->Find("h")));
  EXPECT_EQ(h.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(h.to(at::kFloat), at::tensor({1.0f, -2.0f, 0.5f})));
  ASSERT_OK_AND_ASSIGN(at::Tensor b, TensorFromSafetensors(file, *file->Find("b")));
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(b.to(at::kFloat), at::tensor({1.0f, -2.0f, 3.0f})));
  ASSERT_OK_AND_ASSIGN(at::Tensor i, TensorFromSafetensors(file, *file->Find("i")));
  EXPECT_EQ(i.scalar_type(), at::kLong);
  EXPECT_EQ(i.item<int64_t>(), -2);
}

TEST(TensorIoTest, ZeroCopyWhenAlignedAndFileNeverModified) {
  const std::string dir = testing::MakeTempDir();
  const std::string path = dir + "/t.safetensors";
  at::Tensor src = at::arange(16, at::kFloat).reshape({4, 4});
  ASSERT_OK(SaveSafetensors(path, {{"w", src}, {"odd", at::ones({3}, at::kByte)}}));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  const SafetensorsEntry* e = file->Find("w");
  ASSERT_NE(e, nullptr);
  ASSERT_OK_AND_ASSIGN(at::Tensor t, TensorFromSafetensors(file, *e));
  EXPECT_TRUE(at::equal(t, src));
  if (reinterpret_cast<uintptr_t>(file->Bytes(*e).data()) % 4 == 0) {
    EXPECT_EQ(t.data_ptr(), static_cast<const void*>(file->Bytes(*e).data()));
  }
  t.add_(1.0);  // copy-on-write: must not reach the file
  file.reset();
  ASSERT_OK_AND_ASSIGN(auto again, LoadSafetensors(path));
  EXPECT_TRUE(at::equal(again.at("w"), src));
  EXPECT_TRUE(at::equal(t, src + 1));  // tensor outlives the file object
}

TEST(TensorIoTest, RoundTripsEveryDtype) {
  const std::string path = testing::MakeTempDir() + "/all.safetensors";
  NamedTensors in = {
      {"f32", at::randn({3, 5})},
      {"f16", at::randn({4}).to(at::kHalf)},
      {"bf16", at::randn({2, 2}).to(at::kBFloat16)},
      {"f64", at::randn({2}, at::kDouble)},
      {"i64", at::arange(-3, 3, at::kLong)},
      {"i32", at::arange(5, at::kInt)},
      {"u8", at::arange(200, 205, at::kInt).to(at::kByte)},
      {"bool", at::tensor({1, 0, 1}).to(at::kBool)},
      {"noncontig", at::randn({4, 6}).t()},
  };
  ASSERT_OK(SaveSafetensors(path, in));
  ASSERT_OK_AND_ASSIGN(auto out, LoadSafetensors(path));
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(out.count(name)) << name;
    EXPECT_EQ(out.at(name).scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(out.at(name), t)) << name;
  }
  EXPECT_THAT(SaveSafetensors(path, {{"c", at::randn({2}, at::kComplexFloat)}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// ---- Real fixtures from ../shared ----

std::string ModuleWeightName(const std::string& module) { return module + ".weight"; }

TEST(TensorIoFixtureTest, ReadsTheStories260KCheckpoint) {
  LORASERVE_REQUIRE_SHARED();
  const std::string dir = testing::SharedPath("fixtures/models/stories260K");
  ASSERT_OK_AND_ASSIGN(Json config, ReadJsonFile(dir + "/config.json"));
  const int64_t hidden = config["hidden_size"], inter = config["intermediate_size"];
  const int64_t layers = config["num_hidden_layers"], heads = config["num_attention_heads"];
  const int64_t kv = config["num_key_value_heads"], vocab = config["vocab_size"];
  const int64_t hd = hidden / heads;
  std::map<std::string, std::vector<int64_t>> want = {
      {"model.embed_tokens.weight", {vocab, hidden}}, {"model.norm.weight", {hidden}}};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    want[p + "input_layernorm.weight"] = {hidden};
    want[p + "post_attention_layernorm.weight"] = {hidden};
    want[p + "self_attn.q_proj.weight"] = {heads * hd, hidden};
    want[p + "self_attn.k_proj.weight"] = {kv * hd, hidden};
    want[p + "self_attn.v_proj.weight"] = {kv * hd, hidden};
    want[p + "self_attn.o_proj.weight"] = {hidden, heads * hd};
    want[p + "mlp.gate_proj.weight"] = {inter, hidden};
    want[p + "mlp.up_proj.weight"] = {inter, hidden};
    want[p + "mlp.down_proj.weight"] = {hidden, inter};
  }
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir + "/model.safetensors"));
  ASSERT_EQ(file->entries().size(), want.size());
  for (const SafetensorsEntry& e : file->entries()) {
    ASSERT_TRUE(want.count(e.name)) << "unexpected tensor " << e.name;
    EXPECT_EQ(e.shape, want.at(e.name)) << e.name;
    EXPECT_EQ(e.dtype, DType::kF32) << e.name;
  }
  ASSERT_OK_AND_ASSIGN(auto tensors, LoadSafetensors(dir + "/model.safetensors"));
  // RMSNorm weights of a trained model are finite and mostly positive; a mis-decoded file is not.
  for (const auto& [name, t] : tensors) EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << name;
}

// Every adapter under fixtures/peft: names and shapes as PEFT listed them in expected.json, and
//   scaling · B @ A == delta.<module>  (DoRA: lora_delta; embedding: transposed)    within 1e-6
//   base W + delta == weight.merged.<module>  (DoRA: magnitude-normalised)        within 1e-6
TEST(TensorIoFixtureTest, AdapterFactorsReproducePeftDeltasAndMergedWeights) {
  LORASERVE_REQUIRE_SHARED();
  ASSERT_OK_AND_ASSIGN(auto base,
                       LoadSafetensors(testing::SharedPath("fixtures/models/stories260K/model.safetensors")));
  int adapters = 0, delta_checks = 0, merged_checks = 0;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(testing::SharedPath("fixtures/peft"))) {
    if (entry.path().filename() != "adapter_model.safetensors") continue;
    const std::string case_dir = entry.path().parent_path().parent_path().string();
    SCOPED_TRACE(case_dir);
    ++adapters;
    ASSERT_OK_AND_ASSIGN(Json expected_json, ReadJsonFile(case_dir + "/expected.json"));
    ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(entry.path().string()));
    ASSERT_OK_AND_ASSIGN(auto adapter, LoadSafetensors(entry.path().string()));
    ASSERT_OK_AND_ASSIGN(auto expected, LoadSafetensors(case_dir + "/expected.safetensors"));

    // Names, shapes and dtypes agree with PEFT's own listing.
    const Json& keys = expected_json["adapter_safetensors_keys"];
    ASSERT_EQ(keys.size(), file->entries().size());
    for (const SafetensorsEntry& e : file->entries()) {
      ASSERT_TRUE(keys.contains(e.name)) << e.name;
      EXPECT_EQ(e.shape, keys[e.name].get<std::vector<int64_t>>()) << e.name;
      EXPECT_EQ(e.dtype, DType::kF32) << e.name;
    }

    std::map<std::string, at::Tensor> delta_of;
    for (const auto& [module, scaling_json] : expected_json["scaling"].items()) {
      const double s = scaling_json.get<double>();
      const std::string prefix = "base_model.model." + module;
      at::Tensor d;
      if (adapter.count(prefix + ".lora_A.weight")) {
        d = s * at::matmul(adapter.at(prefix + ".lora_B.weight"), adapter.at(prefix + ".lora_A.weight"));
      } else {
        ASSERT_TRUE(adapter.count(prefix + ".lora_embedding_A")) << module;
        d = (s * at::matmul(adapter.at(prefix + ".lora_embedding_B"),
                            adapter.at(prefix + ".lora_embedding_A")))
                .t();
      }
      delta_of[module] = d;
      const std::string lora_delta = "lora_delta." + ModuleWeightName(module);
      const std::string delta = "delta." + ModuleWeightName(module);
      const std::string& name = expected.count(lora_delta) ? lora_delta : delta;
      if (!expected.count(name)) continue;  // lora_bias: PEFT cannot merge, so it wrote no delta
      EXPECT_LE((d - expected.at(name)).abs().max().item<double>(), 1e-6) << module;
      ++delta_checks;
    }
    for (const auto& [name, merged] : expected) {
      if (name.rfind("weight.merged.", 0) != 0) continue;
      const std::string weight = name.substr(std::string("weight.merged.").size());
      const std::string module = weight.substr(0, weight.size() - std::string(".weight").size());
      ASSERT_TRUE(base.count(weight)) << weight;
      ASSERT_TRUE(delta_of.count(module)) << module;
      at::Tensor w = base.at(weight) + delta_of.at(module);
      const std::string magnitude = "base_model.model." + module + ".lora_magnitude_vector";
      if (adapter.count(magnitude)) {  // DoRA: rows rescaled to the learned magnitude
        w = w * (adapter.at(magnitude) / w.norm(2, {1})).unsqueeze(1);
      }
      EXPECT_LE((w - merged).abs().max().item<double>(), 1e-6) << name;
      ++merged_checks;
    }
    // modules_to_save: the saved head is the adapter's copy; embedding LoRA: the saved base layer
    // is the checkpoint's embedding.
    if (adapter.count("base_model.model.lm_head.weight") && expected.count("weight.saved_lm_head")) {
      EXPECT_TRUE(at::equal(adapter.at("base_model.model.lm_head.weight"),
                            expected.at("weight.saved_lm_head")));
    }
    const std::string embed_base = "base_model.model.model.embed_tokens.base_layer.weight";
    if (adapter.count(embed_base)) {
      EXPECT_TRUE(at::equal(adapter.at(embed_base), base.at("model.embed_tokens.weight")));
    }
  }
  EXPECT_EQ(adapters, 20);
  EXPECT_GT(delta_checks, 100);
  EXPECT_GE(merged_checks, 14);
}

}  // namespace
}  // namespace loraserve::core
