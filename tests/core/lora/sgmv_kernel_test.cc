// The multi-adapter kernels of core/lora/sgmv.h against the gather reference (GEMM pairs in fp32)
// on random problems: ranks 1 to 256, 1 to 512 rows, 1 to 128 adapters, empty segments, base-only
// rows, index sets and ranges, LoRA biases, DoRA and merged-DoRA corrections overlapping other
// segments, fp32 / bf16 / fp16 activations. The host emulation runs everywhere (it checks the plan
// and index arithmetic the CUDA kernels use); the CUDA kernels run where a GPU is visible.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/lora/lora_kernel.h"
#include "core/lora/sgmv.h"

namespace loraserve::core {
namespace {

struct Problem {
  at::Tensor x, y;
  std::vector<RowSet> sets;
  std::vector<at::Tensor> keep;  // a, b, biases, scales
  std::vector<LoraSegment> segments;
  int64_t empty_segments = 0, base_rows = 0;
};

// Trial 0 is the largest case (512 rows, 128 adapters, rank 256 among them).
std::unique_ptr<Problem> RandomProblem(int trial, at::Device device, at::ScalarType act) {
  std::mt19937 rng(1000 + trial);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto p = std::make_unique<Problem>();
  const int64_t rows = trial == 0 ? 512 : uniform(1, 512);
  const int adapters = trial == 0 ? 128 : uniform(1, 128);
  const int64_t in = uniform(1, 96), out = uniform(1, 96);
  const at::TensorOptions f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  p->x = at::randn({rows, in}, f32).to(act);
  p->y = at::randn({rows, out}, f32).to(act);
  // Each row's adapter (-1: base only); sorted rows give ranges, shuffled ones index sets.
  std::vector<int> adapter_of(static_cast<size_t>(rows));
  for (auto& a : adapter_of) a = uniform(-1, adapters - 1);
  if (trial % 3 == 0) std::sort(adapter_of.begin(), adapter_of.end());
  p->sets.reserve(static_cast<size_t>(adapters) + 4);
  auto add_set = [&](const std::vector<int64_t>& r) {
    RowSet rs;
    bool contiguous = !r.empty();
    for (size_t i = 1; i < r.size(); ++i) contiguous = contiguous && r[i] == r[i - 1] + 1;
    if (contiguous) {
      rs.begin = r.front();
      rs.end = r.back() + 1;
    } else if (!r.empty()) {
      rs.index = at::tensor(at::ArrayRef<int64_t>(r), at::kLong);
      if (!device.is_cpu()) {
        rs.index_host = rs.index;
        rs.index = rs.index.to(device);
      }
    }
    p->sets.push_back(rs);
    return &p->sets.back();
  };
  auto tensor = [&](at::Tensor t) {
    p->keep.push_back(t.contiguous());
    return &p->keep.back();
  };
  p->keep.reserve(static_cast<size_t>(adapters) * 6 + 32);
  const at::Tensor* base_bias = uniform(0, 1) != 0 ? tensor(at::randn({out}, f32)) : nullptr;
  auto make_segment = [&](const RowSet* rs, int64_t rank, SegmentKind kind) {
    LoraSegment s;
    s.rows = rs;
    s.a = tensor(at::randn({rank, in}, f32) / std::sqrt(static_cast<double>(in)));
    s.b = tensor(at::randn({out, rank}, f32) / std::sqrt(static_cast<double>(rank)));
    s.bias = uniform(0, 3) == 0 ? tensor(at::randn({out}, f32)) : nullptr;
    s.scale = (uniform(0, 4) == 0 ? -1.0 : 1.0) * (0.25 + uniform(0, 8) * 0.25);
    s.kind = kind;
    if (kind != SegmentKind::kAdd) {
      s.dora_scale = tensor(1.0 + 0.2 * at::rand({out}, f32));
      s.base_bias = base_bias;
    }
    return s;
  };
  // Merged-DoRA corrections first, on random subsets overlapping everything else.
  for (int u = uniform(0, 2); u > 0; --u) {
    std::vector<int64_t> r;
    for (int64_t i = 0; i < rows; ++i) {
      if (uniform(0, 2) == 0) r.push_back(i);
    }
    p->segments.push_back(make_segment(add_set(r), uniform(1, 16), SegmentKind::kUndoDora));
  }
  std::vector<LoraSegment> dora;
  for (int k = 0; k < adapters; ++k) {
    std::vector<int64_t> r;
    for (int64_t i = 0; i < rows; ++i) {
      if (adapter_of[static_cast<size_t>(i)] == k) r.push_back(i);
    }
    if (r.empty()) ++p->empty_segments;
    const int64_t rank = (trial == 0 && k == 0) ? 256 : (uniform(0, 9) == 0 ? uniform(1, 256) : uniform(1, 32));
    LoraSegment s = make_segment(add_set(r), rank, uniform(0, 5) == 0 ? SegmentKind::kDora : SegmentKind::kAdd);
    (s.kind == SegmentKind::kDora ? dora : p->segments).push_back(s);
  }
  p->segments.insert(p->segments.end(), dora.begin(), dora.end());
  for (int a : adapter_of) p->base_rows += a < 0 ? 1 : 0;
  return p;
}

// Runs `kernel` on the problem's activations and compares with the gather kernel run in fp32 on
// the same (rounded) inputs: the kernels accumulate in fp32 and round y once.
void ExpectMatchesReference(const LoraKernel& kernel, const Problem& p, const char* what) {
  at::Tensor y = p.y.clone();
  kernel.AddSegments(p.x, y, p.segments);
  at::Tensor ref = p.y.to(at::kFloat).clone();  // .to() of an fp32 tensor is the tensor itself
  MakeGatherLoraKernel()->AddSegments(p.x.to(at::kFloat), ref, p.segments);
  const at::Tensor got = y.to(at::kFloat);
  const double rel = p.x.scalar_type() == at::kFloat ? 1e-5 : p.x.scalar_type() == at::kBFloat16 ? 8e-3 : 1e-3;
  const double excess = ((got - ref).abs() - rel * ref.abs() - 1e-4).max().item<double>();
  EXPECT_LE(excess, 0.0) << what << ": max |got - ref| = " << (got - ref).abs().max().item<double>();
  // The segments changed y (so the comparison is not of two untouched copies).
  if (p.segments.size() > static_cast<size_t>(p.empty_segments)) {
    EXPECT_GT((ref - p.y.to(at::kFloat)).abs().max().item<double>(), 1e-3) << what;
  }
}

TEST(SgmvKernelTest, HostEmulationMatchesGatherOnRandomProblems) {
  at::manual_seed(3);
  const auto kernel = MakeSgmvHostLoraKernel();
  int64_t empty = 0, base_only = 0;
  for (int trial = 0; trial < 24; ++trial) {
    for (at::ScalarType act : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const auto p = RandomProblem(trial, at::kCPU, act);
      empty += p->empty_segments;
      base_only += p->base_rows;
      ExpectMatchesReference(*kernel, *p, (std::to_string(trial) + " " + c10::toString(act)).c_str());
    }
  }
  EXPECT_GT(empty, 0);
  EXPECT_GT(base_only, 0);
}

TEST(SgmvKernelTest, ConversionsRoundLikeLibTorch) {
  // Every fp16 / bf16 bit pattern decodes like LibTorch, and random floats (normal, subnormal,
  // huge, ties) encode like LibTorch's round-to-nearest-even.
  const at::Tensor all = at::arange(-32768, 32768, at::kInt).to(at::kShort);
  const at::Tensor bf_all = all.view(at::kBFloat16).to(at::kFloat).contiguous();
  const at::Tensor hf_all = all.view(at::kHalf).to(at::kFloat).contiguous();
  for (int64_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(all.data_ptr<int16_t>()[i]);
    const float bf = bf_all.data_ptr<float>()[i], hf = hf_all.data_ptr<float>()[i];
    if (std::isnan(bf)) {
      EXPECT_TRUE(std::isnan(sgmv::Bf16BitsToFloat(h)));
    } else {
      ASSERT_EQ(sgmv::Bf16BitsToFloat(h), bf) << h;
    }
    if (std::isnan(hf)) {
      EXPECT_TRUE(std::isnan(sgmv::Fp16BitsToFloat(h)));
    } else {
      ASSERT_EQ(sgmv::Fp16BitsToFloat(h), hf) << h;
    }
  }
  std::mt19937 rng(5);
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 2.98e-8f, 5.96e-8f,
                               6.1e-5f, 1e30f, -3.4e38f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048};
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &u, sizeof(f));
    if (!std::isnan(f)) values.push_back(f);
    values.push_back(std::ldexp(static_cast<float>(rng() % 4096), static_cast<int>(rng() % 60) - 40));
  }
  const at::Tensor v = at::tensor(values, at::kFloat);
  const at::Tensor bf = v.to(at::kBFloat16).view(at::kShort).contiguous();
  const at::Tensor hf = v.to(at::kHalf).view(at::kShort).contiguous();
  for (size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(sgmv::FloatToBf16Bits(values[i]), static_cast<uint16_t>(bf.data_ptr<int16_t>()[i])) << values[i];
    ASSERT_EQ(sgmv::FloatToFp16Bits(values[i]), static_cast<uint16_t>(hf.data_ptr<int16_t>()[i])) << values[i];
  }
}

TEST(SgmvKernelTest, CudaKernelMatchesGatherOnRandomProblems) {
  const auto kernel = MakeCudaLoraKernel();
  if (kernel == nullptr) GTEST_SKIP() << "this build has no CUDA (make build-cuda)";
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  at::manual_seed(3);
  for (int trial = 0; trial < 64; ++trial) {
    for (at::ScalarType act : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const auto p = RandomProblem(trial, at::Device(at::kCUDA, 0), act);
      ExpectMatchesReference(*kernel, *p, (std::to_string(trial) + " " + c10::toString(act)).c_str());
    }
  }
}

}  // namespace
}  // namespace loraserve::core
