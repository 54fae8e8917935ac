// Small inline helpers for the hand-written CPU loops (core/model/decode_attention.cc,
// core/lora/lora_kernel.cc): float32 / bfloat16 element reads and a dot product the compiler can
// vectorise without -ffast-math. Internal to core/.
#ifndef LORASERVE_CORE_MODEL_CPU_DOT_H_
#define LORASERVE_CORE_MODEL_CPU_DOT_H_

#include <c10/util/BFloat16.h>

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
// Loops with an AVX2 + FMA version, chosen at run time with HasAvx2Fma() (the build targets
// baseline x86-64).
#define LORASERVE_CPU_AVX2 1
#define LORASERVE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

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

#ifdef LORASERVE_CPU_AVX2
inline bool HasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// Eight floats, or eight bfloat16 widened exactly (the bits shifted into the high half).
LORASERVE_TARGET_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
LORASERVE_TARGET_AVX2 inline __m256 Load8(const c10::BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// The sum of v's lanes.
LORASERVE_TARGET_AVX2 inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four lane sums of a0..a3, in order.
LORASERVE_TARGET_AVX2 inline __m128 Sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif  // LORASERVE_CPU_AVX2

}  // namespace loraserve::core::cpu

#endif  // LORASERVE_CORE_MODEL_CPU_DOT_H_
