// Small inline helpers for the hand-written CPU loops (core/model/decode_attention.cc,
// core/lora/lora_kernel.cc): float32 / bfloat16 element reads and a dot product the compiler can
// vectorise without -ffast-math. Internal to core/.
#ifndef LORASERVE_CORE_MODEL_CPU_DOT_H_
#define LORASERVE_CORE_MODEL_CPU_DOT_H_

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace loraserve::core::cpu {

inline float ToFloat(float v) { return v; }
inline float ToFloat(c10::BFloat16 v) { return static_cast<float>(v); }

// Σ p[i]·q[i] over n elements with eight partial sums, so the loop vectorises without
// reassociating one running sum.
template <typename T>
inline float Dot(const float* p, const T* q, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) part[k] += p[i + k] * ToFloat(q[i + k]);
  }
  float sum = 0;
  for (; i < n; ++i) sum += p[i] * ToFloat(q[i]);
  for (int k = 0; k < 8; ++k) sum += part[k];
  return sum;
}

}  // namespace loraserve::core::cpu

#endif  // LORASERVE_CORE_MODEL_CPU_DOT_H_
