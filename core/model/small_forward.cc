#include "core/model/small_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/model/cpu_dot.h"

namespace loraserve::core {
namespace {

// ---------------------------------------------------------------- linear layers

void LinearPortable(const SmallLinear& m, const float* x, int64_t rows, float* y) {
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t o = 0; o < m.out; ++o) y[t * m.out + o] = cpu::Dot(x + t * m.in, m.weight + o * m.in, m.in);
  }
}

#ifdef LORASERVE_CPU_AVX2
using cpu::Sum8;
using cpu::Sum4;

// y[t][r] = x[t]·w[r] for R (1 or 4) weight rows and TT input rows: R·TT independent
// accumulators, each weight load shared by the TT rows. `y` has row stride `ys`.
template <int R, int TT>
LORASERVE_TARGET_AVX2 void Block(const float* x, const float* w, int64_t in, float* y, int64_t ys) {
  __m256 acc[TT][R];
  for (int t = 0; t < TT; ++t) {
    for (int r = 0; r < R; ++r) acc[t][r] = _mm256_setzero_ps();
  }
  const int64_t n8 = in & ~int64_t{7};
  for (int64_t i = 0; i < n8; i += 8) {
    __m256 xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * in + i);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * in + i);
      for (int t = 0; t < TT; ++t) acc[t][r] = _mm256_fmadd_ps(wv, xv[t], acc[t][r]);
    }
  }
  for (int t = 0; t < TT; ++t) {
    float* out = y + t * ys;
    if constexpr (R == 4) {
      _mm_storeu_ps(out, Sum4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
    } else {
      out[0] = Sum8(acc[t][0]);
    }
    for (int r = 0; r < R; ++r) {
      for (int64_t i = n8; i < in; ++i) out[r] += x[t * in + i] * w[r * in + i];
    }
  }
}

template <int R>
LORASERVE_TARGET_AVX2 void Rows(const SmallLinear& m, const float* x, int64_t rows, int64_t o, float* y) {
  const float* w = m.weight + o * m.in;
  int64_t t = 0;
  for (; t + 3 <= rows; t += 3) Block<R, 3>(x + t * m.in, w, m.in, y + t * m.out + o, m.out);
  if (rows - t == 2) Block<R, 2>(x + t * m.in, w, m.in, y + t * m.out + o, m.out);
  if (rows - t == 1) Block<R, 1>(x + t * m.in, w, m.in, y + t * m.out + o, m.out);
}

LORASERVE_TARGET_AVX2 void LinearAvx2(const SmallLinear& m, const float* x, int64_t rows, float* y) {
  int64_t o = 0;
  for (; o + 4 <= m.out; o += 4) Rows<4>(m, x, rows, o, y);
  for (; o < m.out; ++o) Rows<1>(m, x, rows, o, y);
}

#endif  // LORASERVE_CPU_AVX2

// y = x·Wᵀ, in AVX2 where the CPU has it.
void LinearWithoutBias(const SmallLinear& m, const float* x, int64_t rows, float* y) {
#ifdef LORASERVE_CPU_AVX2
  if (cpu::HasAvx2Fma()) return LinearAvx2(m, x, rows, y);
#endif
  LinearPortable(m, x, rows, y);
}

// ---------------------------------------------------------------- the other operators

// transformers' LlamaRMSNorm in float32: w ⊙ (x · rsqrt(mean(x²) + eps)).
void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* xt = x + t * dim;
    const float mean = cpu::Dot(xt, xt, dim) / static_cast<float>(dim);
    const float r = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < dim; ++i) out[t * dim + i] = w[i] * (xt[i] * r);
  }
}

// Rotary embedding, rotate_half convention, in place on [rows, heads, head_dim] at positions 0..rows-1.
void Rope(float* x, int64_t rows, int64_t heads, int64_t dim, const float* cos, const float* sin) {
  const int64_t half = dim / 2;
  for (int64_t t = 0; t < rows; ++t) {
    const float* c = cos + t * dim;
    const float* s = sin + t * dim;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] + (-b) * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
  }
}

// Causal (optionally sliding-window) grouped-query attention of the whole sequence.
void Attention(const SmallModelView& m, const float* q, const float* k, const float* v, int64_t rows,
               float* out) {
  const int64_t hd = m.head_dim, groups = m.heads / m.kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  std::vector<float> p(static_cast<size_t>(rows));
  for (int64_t j = 0; j < rows; ++j) {
    const int64_t first = m.sliding_window > 0 ? std::max<int64_t>(0, j + 1 - m.sliding_window) : 0;
    for (int64_t h = 0; h < m.heads; ++h) {
      const int64_t kvh = h / groups;
      const float* qh = q + (j * m.heads + h) * hd;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t s = first; s <= j; ++s) {
        p[s] = cpu::Dot(qh, k + (s * m.kv_heads + kvh) * hd, hd) * scale;
        max_score = std::max(max_score, p[s]);
      }
      float total = 0;
      for (int64_t s = first; s <= j; ++s) {
        p[s] = std::exp(p[s] - max_score);
        total += p[s];
      }
      float* o = out + (j * m.heads + h) * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t s = first; s <= j; ++s) {
        const float w = p[s] / total;
        const float* vs = v + (s * m.kv_heads + kvh) * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] += w * vs[d];
      }
    }
  }
}

}  // namespace

void SmallLinearRows(const SmallLinear& m, const float* x, int64_t rows, float* y) {
  LinearWithoutBias(m, x, rows, y);
  if (m.bias != nullptr) {
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t o = 0; o < m.out; ++o) y[t * m.out + o] += m.bias[o];
    }
  }
}

void SmallScore(const SmallModelView& m, const int32_t* ids, int64_t n, float* logits) {
  const int64_t h = m.hidden, qdim = m.heads * m.head_dim, kvdim = m.kv_heads * m.head_dim;
  const int64_t inter = m.layers.empty() ? 0 : m.layers[0].gate.out;
  auto buffer = [](int64_t size) { return std::vector<float>(static_cast<size_t>(size)); };
  std::vector<float> x = buffer(n * h), hn = buffer(n * h), delta = buffer(n * h);
  std::vector<float> q = buffer(n * qdim), k = buffer(n * kvdim), v = buffer(n * kvdim), attn = buffer(n * qdim);
  std::vector<float> gate = buffer(n * inter), up = buffer(n * inter);
  for (int64_t t = 0; t < n; ++t) std::memcpy(&x[t * h], m.embedding + ids[t] * h, sizeof(float) * h);
  for (const SmallLayer& l : m.layers) {
    RmsNorm(x.data(), l.input_norm, n, h, m.rms_norm_eps, hn.data());
    SmallLinearRows(l.q, hn.data(), n, q.data());
    SmallLinearRows(l.k, hn.data(), n, k.data());
    SmallLinearRows(l.v, hn.data(), n, v.data());
    Rope(q.data(), n, m.heads, m.head_dim, m.rope_cos, m.rope_sin);
    Rope(k.data(), n, m.kv_heads, m.head_dim, m.rope_cos, m.rope_sin);
    Attention(m, q.data(), k.data(), v.data(), n, attn.data());
    SmallLinearRows(l.o, attn.data(), n, delta.data());
    for (int64_t i = 0; i < n * h; ++i) x[i] += delta[i];
    RmsNorm(x.data(), l.post_norm, n, h, m.rms_norm_eps, hn.data());
    SmallLinearRows(l.gate, hn.data(), n, gate.data());
    SmallLinearRows(l.up, hn.data(), n, up.data());
    for (int64_t i = 0; i < n * inter; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    SmallLinearRows(l.down, gate.data(), n, delta.data());
    for (int64_t i = 0; i < n * h; ++i) x[i] += delta[i];
  }
  RmsNorm(x.data(), m.final_norm, n, h, m.rms_norm_eps, hn.data());
  SmallLinearRows(m.head, hn.data(), n, logits);
}

}  // namespace loraserve::core
