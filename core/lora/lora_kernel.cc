#include "core/lora/lora_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

#include "core/model/cpu_dot.h"

namespace loraserve::core {
namespace {

// The rows of `t` in `rows`: a view for a range, a copy for an index set.
at::Tensor Rows(const at::Tensor& t, const RowSet& rows) {
  return rows.index.defined() ? t.index_select(0, rows.index) : t.narrow(0, rows.begin, rows.end - rows.begin);
}

class GatherLoraKernel : public LoraKernel {
 public:
  void AddSegments(const at::Tensor& x, at::Tensor& y,
                   const std::vector<LoraSegment>& segments) const override {
    const bool fp32 = x.scalar_type() == at::kFloat;
    for (const LoraSegment& s : segments) {
      if (s.rows->size() == 0) continue;
      const RowSet& rows = *s.rows;
      at::Tensor xs = Rows(x, rows);
      if (!fp32) xs = xs.to(at::kFloat);
      // bfloat16 adapter weights: the products still run (and accumulate) in float32.
      const at::Tensor a = s.a->scalar_type() == at::kFloat ? *s.a : s.a->to(at::kFloat);
      const at::Tensor b = s.b->scalar_type() == at::kFloat ? *s.b : s.b->to(at::kFloat);
      at::Tensor d = at::mm(at::mm(xs, a.t()), b.t());
      if (s.kind != SegmentKind::kAdd) {
        ApplyDora(s, d, y);
        continue;
      }
      if (s.bias != nullptr) d.add_(*s.bias);
      if (!fp32) d = d.to(y.scalar_type());
      if (rows.index.defined()) {
        y.index_add_(0, rows.index, d, s.scale);
      } else {
        y.narrow(0, rows.begin, rows.end - rows.begin).add_(d, s.scale);
      }
    }
  }

 private:
  // kDora / kUndoDora (lora_kernel.h) on the segment's rows, in fp32, written back once.
  static void ApplyDora(const LoraSegment& s, const at::Tensor& d, at::Tensor& y) {
    const RowSet& rows = *s.rows;
    at::Tensor ys = Rows(y, rows).to(at::kFloat);
    if (s.base_bias != nullptr) ys = ys - *s.base_bias;
    at::Tensor out;
    if (s.kind == SegmentKind::kDora) {
      out = (ys + d * s.scale) * *s.dora_scale;
      if (s.bias != nullptr) out = out + *s.bias * s.scale;
    } else {
      out = ys / *s.dora_scale + (s.bias != nullptr ? d + *s.bias : d) * s.scale;
    }
    if (s.base_bias != nullptr) out = out + *s.base_bias;
    out = out.to(y.scalar_type());
    if (rows.index.defined()) {
      y.index_copy_(0, rows.index, out);
    } else {
      y.narrow(0, rows.begin, rows.end - rows.begin).copy_(out);
    }
  }
};

using cpu::Dot;
using cpu::ToFloat;

// acc[0, out) += scale·(B·(A·x) + bias) for one row; A [rank, in] and B [out, rank] of weight type
// W (float or bfloat16), accumulated in float; t has room for rank floats.
template <typename W>
inline void AddRow(const float* x, const W* a, const W* b, const float* bias, float scale, int64_t rank,
                   int64_t in, int64_t out, float* t, float* acc) {
  for (int64_t j = 0; j < rank; ++j) t[j] = Dot(x, a + j * in, in);
  for (int64_t o = 0; o < out; ++o) {
    float d = Dot(t, b + o * rank, rank);
    if (bias != nullptr) d += bias[o];
    acc[o] += scale * d;
  }
}

#ifdef LORASERVE_CPU_AVX2
// v·m[r] for the four rows m[r] = m + r·stride, over the first n8 (a multiple of 8) elements.
template <typename W>
LORASERVE_TARGET_AVX2 inline __m128 Dot4(const float* v, const W* m, int64_t stride, int64_t n8) {
  using cpu::Load8;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 vv = _mm256_loadu_ps(v + i);
    s0 = _mm256_fmadd_ps(Load8(m + i), vv, s0);
    s1 = _mm256_fmadd_ps(Load8(m + stride + i), vv, s1);
    s2 = _mm256_fmadd_ps(Load8(m + 2 * stride + i), vv, s2);
    s3 = _mm256_fmadd_ps(Load8(m + 3 * stride + i), vv, s3);
  }
  return cpu::Sum4(s0, s1, s2, s3);
}

// AddRow with AVX2 + FMA: the shrink four rows of A at a time (four accumulators sharing each x
// load), the expand four outputs at a time over B's rank-wide rows, bf16 widened in registers.
template <typename W>
LORASERVE_TARGET_AVX2 void AddRowAvx2(const float* x, const W* a, const W* b, const float* bias, float scale,
                                      int64_t rank, int64_t in, int64_t out, float* t, float* acc) {
  const int64_t in8 = in & ~int64_t{7};
  int64_t j = 0;
  for (; j + 4 <= rank; j += 4) {
    const W* a0 = a + j * in;
    _mm_storeu_ps(t + j, Dot4(x, a0, in, in8));
    for (int64_t i = in8; i < in; ++i) {
      for (int r = 0; r < 4; ++r) t[j + r] += x[i] * ToFloat(a0[r * in + i]);
    }
  }
  for (; j < rank; ++j) t[j] = Dot(x, a + j * in, in);
  const int64_t rank8 = rank & ~int64_t{7};
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t o = 0;
  for (; o + 4 <= out; o += 4) {
    const W* b0 = b + o * rank;
    alignas(16) float d[4];
    _mm_store_ps(d, Dot4(t, b0, rank, rank8));
    for (int64_t k = rank8; k < rank; ++k) {
      for (int r = 0; r < 4; ++r) d[r] += t[k] * ToFloat(b0[r * rank + k]);
    }
    __m128 dv = _mm_load_ps(d);
    if (bias != nullptr) dv = _mm_add_ps(dv, _mm_loadu_ps(bias + o));
    _mm_storeu_ps(acc + o, _mm_add_ps(_mm_loadu_ps(acc + o), _mm_mul_ps(vscale, dv)));
  }
  for (; o < out; ++o) {
    float d = Dot(t, b + o * rank, rank);
    if (bias != nullptr) d += bias[o];
    acc[o] += scale * d;
  }
}
#endif

// One row through AddRow, in AVX2 where the CPU has it.
template <typename W>
void AddRowFast(const float* x, const W* a, const W* b, const float* bias, float scale, int64_t rank, int64_t in,
                int64_t out, float* t, float* acc) {
#ifdef LORASERVE_CPU_AVX2
  if (cpu::HasAvx2Fma()) return AddRowAvx2(x, a, b, bias, scale, rank, in, out, t, acc);
#endif
  AddRow(x, a, b, bias, scale, rank, in, out, t, acc);
}

// CPU: segments of a few rows (decode: one row per sequence) are computed row by row in one
// parallel loop straight from the adapter weights (two small matrix-vector products per row, no
// LibTorch op per segment); larger segments (prefill) keep the GEMM pair of the gather kernel.
class CpuLoraKernel : public LoraKernel {
 public:
  static constexpr int64_t kMaxFusedRows = 8;

  void AddSegments(const at::Tensor& x, at::Tensor& y,
                   const std::vector<LoraSegment>& segments) const override {
    const bool supported = x.device().is_cpu() && x.is_contiguous() && y.is_contiguous() &&
                           x.scalar_type() == y.scalar_type() &&
                           (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
    const bool plain = std::all_of(segments.begin(), segments.end(),
                                   [](const LoraSegment& s) { return s.kind == SegmentKind::kAdd; });
    // DoRA segments do not commute with the others on their rows: keep list order (gather).
    if (!supported || !plain) return gather_.AddSegments(x, y, segments);
    std::vector<LoraSegment> large;
    // (row, segment) for every row of a small segment; sorted by row (segment order kept within a
    // row), rows become the unit of parallelism, so no two threads write one row.
    std::vector<std::pair<int64_t, int>> entries;
    for (size_t i = 0; i < segments.size(); ++i) {
      const LoraSegment& s = segments[i];
      const RowSet& rows = *s.rows;
      if (rows.size() == 0) continue;
      const at::ScalarType wt = s.a->scalar_type();
      if (rows.size() > kMaxFusedRows || !s.a->is_contiguous() || !s.b->is_contiguous() ||
          (wt != at::kFloat && wt != at::kBFloat16) || s.b->scalar_type() != wt) {
        large.push_back(s);
        continue;
      }
      const int64_t* index = nullptr;
      at::Tensor index_cpu;
      if (rows.index.defined()) {
        index_cpu = rows.index.to(at::kCPU, at::kLong).contiguous();
        index = index_cpu.data_ptr<int64_t>();
      }
      for (int64_t k = 0; k < rows.size(); ++k) {
        entries.emplace_back(index != nullptr ? index[k] : rows.begin + k, static_cast<int>(i));
      }
    }
    if (!large.empty()) gather_.AddSegments(x, y, large);
    if (entries.empty()) return;
    std::stable_sort(entries.begin(), entries.end(),
                     [](const auto& l, const auto& r) { return l.first < r.first; });
    // starts[k]: where the k-th distinct row's entries begin (plus the end).
    std::vector<size_t> starts;
    for (size_t e = 0; e < entries.size(); ++e) {
      if (e == 0 || entries[e].first != entries[e - 1].first) starts.push_back(e);
    }
    starts.push_back(entries.size());
    if (x.scalar_type() == at::kFloat) {
      Run<float>(x, y, segments, entries, starts);
    } else {
      Run<c10::BFloat16>(x, y, segments, entries, starts);
    }
  }

 private:
  template <typename T>
  static void Run(const at::Tensor& x, at::Tensor& y, const std::vector<LoraSegment>& segments,
                  const std::vector<std::pair<int64_t, int>>& entries,
                  const std::vector<size_t>& starts) {
    const int64_t in = x.size(1), out = y.size(1);
    const T* xd = x.data_ptr<T>();
    T* yd = y.data_ptr<T>();
    const int64_t num_rows = static_cast<int64_t>(starts.size()) - 1;
    at::parallel_for(0, num_rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xf(static_cast<size_t>(in)), acc(static_cast<size_t>(out)), t;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t r = entries[starts[static_cast<size_t>(k)]].first;
        const T* xr = xd + r * in;
        for (int64_t i = 0; i < in; ++i) xf[i] = ToFloat(xr[i]);
        T* yr = yd + r * out;
        for (int64_t o = 0; o < out; ++o) acc[o] = ToFloat(yr[o]);
        for (size_t e = starts[static_cast<size_t>(k)]; e < starts[static_cast<size_t>(k) + 1]; ++e) {
          const LoraSegment& s = segments[static_cast<size_t>(entries[e].second)];
          const int64_t rank = s.a->size(0);
          t.resize(static_cast<size_t>(rank));
          const float* bias = s.bias != nullptr ? s.bias->data_ptr<float>() : nullptr;
          const float scale = static_cast<float>(s.scale);
          if (s.a->scalar_type() == at::kFloat) {
            AddRowFast(xf.data(), s.a->data_ptr<float>(), s.b->data_ptr<float>(), bias, scale, rank, in, out,
                   t.data(), acc.data());
          } else {
            AddRowFast(xf.data(), s.a->data_ptr<c10::BFloat16>(), s.b->data_ptr<c10::BFloat16>(), bias, scale, rank,
                   in, out, t.data(), acc.data());
          }
        }
        for (int64_t o = 0; o < out; ++o) yr[o] = static_cast<T>(acc[o]);
      }
    });
  }

  GatherLoraKernel gather_;
};

}  // namespace

std::unique_ptr<LoraKernel> MakeGatherLoraKernel() { return std::make_unique<GatherLoraKernel>(); }

std::unique_ptr<LoraKernel> MakeCpuLoraKernel() { return std::make_unique<CpuLoraKernel>(); }

#ifndef LORASERVE_WITH_CUDA
std::unique_ptr<LoraKernel> MakeCudaLoraKernel() { return nullptr; }
#endif

}  // namespace loraserve::core
