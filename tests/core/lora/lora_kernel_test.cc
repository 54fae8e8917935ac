// The CPU LoRA kernel (row-wise fused loop for small segments) against the gather kernel (GEMM
// pairs) on random segments: ranges and index sets, overlapping segments on the same rows (as
// merged-adapter corrections produce), biases, negative scales, small and large segments, fp32 and
// bf16 activations.
#include "core/lora/lora_kernel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace loraserve::core {
namespace {

struct Weights {
  at::Tensor a, b, bias;
};

TEST(LoraKernelTest, CpuKernelMatchesGatherKernel) {
  at::manual_seed(7);
  const int64_t rows = 40, in = 48, out = 56;
  std::vector<Weights> w;
  for (int64_t rank : {1, 4, 8, 16, 3}) {
    Weights x{at::randn({rank, in}), at::randn({out, rank}), at::Tensor()};
    if (rank == 4 || rank == 3) x.bias = at::randn({out});
    w.push_back(x);
  }
  std::vector<RowSet> sets;
  sets.push_back({0, 1, {}, {}});                            // one row (decode)
  sets.push_back({1, 3, {}, {}});                            // two rows
  sets.push_back({3, 30, {}, {}});                           // 27 rows (prefill: GEMM path)
  sets.push_back({0, 0, at::tensor({5, 9, 33}, at::kLong), {}});     // index set, small
  sets.push_back({0, 0, at::arange(0, 40, 3, at::kLong), {}});      // index set, 14 rows
  sets.push_back({30, 38, {}, {}});                          // exactly the fused limit (8 rows)
  sets.push_back({0, 0, at::tensor({0, 2, 38, 39}, at::kLong), {}}); // overlaps rows of others
  std::vector<LoraSegment> segments;
  for (size_t i = 0; i < sets.size(); ++i) {
    const Weights& x = w[i % w.size()];
    segments.push_back({&sets[i], &x.a, &x.b, x.bias.defined() ? &x.bias : nullptr,
                        i % 3 == 2 ? -0.75 : 0.5 + static_cast<double>(i)});
  }
  const auto cpu = MakeCpuLoraKernel();
  const auto gather = MakeGatherLoraKernel();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor x = at::randn({rows, in}).to(dtype);
    const at::Tensor y0 = at::randn({rows, out}).to(dtype);
    at::Tensor y_cpu = y0.clone(), y_gather = y0.clone();
    cpu->AddSegments(x, y_cpu, segments);
    gather->AddSegments(x, y_gather, segments);
    at::Tensor a = y_cpu.to(at::kFloat);
    const at::Tensor b = y_gather.to(at::kFloat);
    // The products change y by O(10); both kernels must agree to float (bf16) rounding.
    EXPECT_GT((a - y0.to(at::kFloat)).abs().max().item<double>(), 1.0);
    if (dtype == at::kFloat) {
      EXPECT_LE((a - b).abs().max().item<double>(), 1e-4);
    } else {
      // bf16 (8 mantissa bits): on rows only small segments touch, the CPU kernel accumulates in
      // fp32 and rounds once, so it is the fp32 computation on the same bf16 inputs rounded to
      // bf16 (the gather kernel, used for large segments, rounds every segment's product).
      std::vector<LoraSegment> small;
      for (const LoraSegment& seg : segments) {
        if (seg.rows->size() <= 8) small.push_back(seg);
      }
      at::Tensor y_small = y0.clone();
      cpu->AddSegments(x, y_small, small);
      a = y_small.to(at::kFloat);
      at::Tensor ref = y0.to(at::kFloat);
      gather->AddSegments(x.to(at::kFloat), ref, small);
      EXPECT_LE(((a - ref).abs() - 4e-3 * ref.abs()).max().item<double>(), 1e-3);
    }
  }
}

// The row kernel's vector blocks (4 rows of A, 4 outputs of B, 8 lanes) and their scalar tails:
// in and out that are and are not multiples of 8 and 4, ranks below, at and between the block
// sizes, fp32 and bf16 weights, against the gather kernel on the same (fp32) values.
TEST(LoraKernelTest, RowKernelBlocksAndTailsMatchGather) {
  at::manual_seed(5);
  const auto cpu = MakeCpuLoraKernel();
  const auto gather = MakeGatherLoraKernel();
  for (const int64_t in : {48, 45}) {
    for (const int64_t out : {56, 53}) {
      for (const int64_t rank : {1, 3, 4, 8, 12, 16, 20}) {
        for (const at::ScalarType wt : {at::kFloat, at::kBFloat16}) {
          SCOPED_TRACE(testing::Message() << "in " << in << " out " << out << " rank " << rank << " "
                                          << c10::toString(wt));
          const at::Tensor a = at::randn({rank, in}).to(wt), b = at::randn({out, rank}).to(wt);
          const at::Tensor a32 = a.to(at::kFloat), b32 = b.to(at::kFloat), bias = at::randn({out});
          std::vector<RowSet> sets = {{0, 1, {}, {}}, {0, 0, at::tensor({2, 4, 5}, at::kLong), {}}};
          std::vector<LoraSegment> seg = {{&sets[0], &a, &b, &bias, 0.75}, {&sets[1], &a, &b, nullptr, -1.5}};
          std::vector<LoraSegment> seg32 = {{&sets[0], &a32, &b32, &bias, 0.75}, {&sets[1], &a32, &b32, nullptr, -1.5}};
          const at::Tensor x = at::randn({6, in}), y0 = at::randn({6, out});
          at::Tensor got = y0.clone(), want = y0.clone();
          cpu->AddSegments(x, got, seg);
          gather->AddSegments(x, want, seg32);
          EXPECT_GT((got - y0).abs().max().item<double>(), 0.5);
          EXPECT_LE((got - want).abs().max().item<double>(), 1e-4 * std::max(1.0, want.abs().max().item<double>()));
        }
      }
    }
  }
}

// bf16-stored adapter weights (--adapter_dtype=bfloat16): both kernels compute with them in fp32
// and agree with the fp32 computation on the same (rounded) weights, small and large segments.
TEST(LoraKernelTest, BfloatWeightsAccumulateInFloat) {
  at::manual_seed(11);
  const int64_t rows = 24, in = 40, out = 36;
  const at::Tensor a16 = at::randn({8, in}).to(at::kBFloat16), b16 = at::randn({out, 8}).to(at::kBFloat16);
  const at::Tensor a32 = a16.to(at::kFloat), b32 = b16.to(at::kFloat);
  const at::Tensor bias = at::randn({out});
  std::vector<RowSet> sets = {{0, 1, {}, {}}, {1, 6, {}, {}}, {6, 24, {}, {}},
                              {0, 0, at::tensor({2, 7, 20}, at::kLong), {}}};
  std::vector<LoraSegment> s16, s32;
  for (size_t i = 0; i < sets.size(); ++i) {
    s16.push_back({&sets[i], &a16, &b16, i == 1 ? &bias : nullptr, 0.5 + static_cast<double>(i)});
    s32.push_back({&sets[i], &a32, &b32, i == 1 ? &bias : nullptr, 0.5 + static_cast<double>(i)});
  }
  const at::Tensor x = at::randn({rows, in});
  const at::Tensor y0 = at::randn({rows, out});
  at::Tensor want = y0.clone();
  MakeGatherLoraKernel()->AddSegments(x, want, s32);
  for (const auto& kernel : {MakeCpuLoraKernel(), MakeGatherLoraKernel()}) {
    at::Tensor got = y0.clone();
    kernel->AddSegments(x, got, s16);
    EXPECT_GT((got - y0).abs().max().item<double>(), 1.0);
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-4);
  }
}

}  // namespace
}  // namespace loraserve::core
