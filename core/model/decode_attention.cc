#include "core/model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/model/cpu_dot.h"

namespace loraserve::core {
namespace {

using cpu::Dot;
using cpu::ToFloat;

template <typename T>
void Run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
         const std::vector<DecodeAttentionSeq>& seqs, double scale, at::Tensor& out) {
  const int64_t heads = q.size(1), kv_heads = k.size(1), dim = q.size(2);
  const int64_t groups = heads / kv_heads;
  const T* qd = q.data_ptr<T>();
  const T* kd = k.data_ptr<T>();
  const T* vd = v.data_ptr<T>();
  T* od = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  const int64_t tasks = static_cast<int64_t>(seqs.size()) * kv_heads;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(static_cast<size_t>(dim)), qf(static_cast<size_t>(dim));
    for (int64_t task = begin; task < end; ++task) {
      const DecodeAttentionSeq& s = seqs[static_cast<size_t>(task / kv_heads)];
      const int64_t h = task % kv_heads;
      const int64_t cap = s.k_cache.size(1);
      T* kc = s.k_cache.data_ptr<T>() + h * cap * dim;
      T* vc = s.v_cache.data_ptr<T>() + h * cap * dim;
      // Append this step's key and value.
      std::copy_n(kd + (s.row * kv_heads + h) * dim, dim, kc + s.past * dim);
      std::copy_n(vd + (s.row * kv_heads + h) * dim, dim, vc + s.past * dim);
      const int64_t span = s.past + 1 - s.first;
      scores.resize(static_cast<size_t>(span));
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t head = h * groups + g;
        const T* qh = qd + (s.row * heads + head) * dim;
        for (int64_t d = 0; d < dim; ++d) qf[d] = ToFloat(qh[d]);
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < span; ++j) {
          scores[j] = Dot(qf.data(), kc + (s.first + j) * dim, dim) * fscale;
          max_score = std::max(max_score, scores[j]);
        }
        float total = 0;
        for (int64_t j = 0; j < span; ++j) {
          scores[j] = std::exp(scores[j] - max_score);
          total += scores[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < span; ++j) {
          const T* value = vc + (s.first + j) * dim;
          const float p = scores[j];
          for (int64_t d = 0; d < dim; ++d) acc[d] += p * ToFloat(value[d]);
        }
        T* o = od + s.row * heads * dim + head * dim;
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<T>(acc[d] * inv);
      }
    }
  });
}

}  // namespace

bool FusedDecodeAttentionSupported(const at::Tensor& q) {
  return q.device().is_cpu() &&
         (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16);
}

void FusedDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::vector<DecodeAttentionSeq>& seqs, double scale,
                          at::Tensor& out) {
  if (seqs.empty()) return;
  if (q.scalar_type() == at::kBFloat16) {
    Run<c10::BFloat16>(q, k, v, seqs, scale, out);
  } else {
    Run<float>(q, k, v, seqs, scale, out);
  }
}

}  // namespace loraserve::core
