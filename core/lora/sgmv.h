// Multi-adapter LoRA over a packed batch in two passes, on raw pointers (no LibTorch), shared by
// the CUDA kernels (sgmv.cu) and a host emulation used to test them where no GPU exists:
//   shrink: for every entry e = (row, segment) and rank index j: t[e, j] = x[row] · A_seg[j]
//           (one launch over all entries of all segments; mixed ranks packed without padding);
//   expand: for every distinct row and output o: y[row, o] goes through the row's entries in
//           order, each adding (or, for DoRA, rescaling with) Σ_j t[e, j]·B_seg[o, j] — one launch
//           over all rows, each element written once, so overlapping segments need no atomics.
// Activations (x, y) are fp32, bf16 or fp16; adapter weights and all arithmetic are fp32.
#ifndef LORASERVE_CORE_LORA_SGMV_H_
#define LORASERVE_CORE_LORA_SGMV_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LORASERVE_HD __host__ __device__ __forceinline__
#else
#define LORASERVE_HD inline
#endif

namespace loraserve::core::sgmv {

enum ActDtype : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2 };
// Matches SegmentKind in lora_kernel.h.
enum Kind : int32_t { kAdd = 0, kDora = 1, kUndoDora = 2 };

struct Segment {
  const float* a = nullptr;           // [rank, in]
  const float* b = nullptr;           // [out, rank]
  const float* lora_bias = nullptr;   // [out] or nullptr
  const float* dora_scale = nullptr;  // [out], kDora / kUndoDora
  const float* base_bias = nullptr;   // [out] or nullptr, kDora / kUndoDora
  int32_t rank = 0;
  int32_t kind = kAdd;
  float scale = 1.0f;
  int32_t pad = 0;
};

struct Entry {
  int32_t row = 0;       // row of x and y
  int32_t segment = 0;   // index into Problem::segments
  int32_t t_offset = 0;  // where its rank values start in t
  int32_t pad = 0;
};

struct Problem {
  const Segment* segments = nullptr;
  const Entry* entries = nullptr;  // shrink units
  int32_t num_entries = 0;
  const int32_t* row_ids = nullptr;      // [num_rows] distinct rows the expand writes
  const int32_t* row_start = nullptr;    // [num_rows + 1] into row_entries
  const int32_t* row_entries = nullptr;  // entry indices, each row's in application order
  int32_t num_rows = 0;
  const void* x = nullptr;  // [T, in], act dtype
  void* y = nullptr;        // [T, out], act dtype, updated in place
  float* t = nullptr;       // [Σ ranks of entries]
  int64_t in = 0;
  int64_t out = 0;
  int32_t act = kF32;
};

// ---- activation loads and stores (round to nearest even, like LibTorch's conversions)

LORASERVE_HD float Bf16BitsToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

LORASERVE_HD uint16_t FloatToBf16Bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

LORASERVE_HD float Fp16BitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

LORASERVE_HD uint16_t FloatToFp16Bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (abs < 0x33000000u) return sign;  // under half the smallest subnormal
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - (abs >> 23);  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

LORASERVE_HD float LoadAct(const void* p, int64_t i, int32_t act) {
  if (act == kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return act == kBF16 ? Bf16BitsToFloat(h) : Fp16BitsToFloat(h);
}

LORASERVE_HD void StoreAct(void* p, int64_t i, int32_t act, float v) {
  if (act == kF32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = act == kBF16 ? FloatToBf16Bits(v) : FloatToFp16Bits(v);
  }
}

// ---- the two passes, one element at a time

// Part of t[e, j]: the terms i = lane, lane + lanes, ... of x[row] · A[j] (lanes = 1: all of it;
// the CUDA kernel gives each of a warp's 32 lanes a strided part and sums them).
LORASERVE_HD float ShrinkPartial(const Problem& p, int32_t e, int32_t j, int32_t lane, int32_t lanes) {
  const Entry& en = p.entries[e];
  const Segment& s = p.segments[en.segment];
  const float* a = s.a + static_cast<int64_t>(j) * p.in;
  const int64_t x0 = static_cast<int64_t>(en.row) * p.in;
  float acc = 0.0f;
  for (int64_t i = lane; i < p.in; i += lanes) acc += LoadAct(p.x, x0 + i, p.act) * a[i];
  return acc;
}

// y[row_ids[r], o] after all of the row's entries.
LORASERVE_HD void ExpandElement(const Problem& p, int32_t r, int64_t o) {
  const int64_t yi = static_cast<int64_t>(p.row_ids[r]) * p.out + o;
  float y = LoadAct(p.y, yi, p.act);
  for (int32_t k = p.row_start[r]; k < p.row_start[r + 1]; ++k) {
    const Entry& en = p.entries[p.row_entries[k]];
    const Segment& s = p.segments[en.segment];
    const float* t = p.t + en.t_offset;
    const float* b = s.b + o * s.rank;
    float d = 0.0f;
    for (int32_t j = 0; j < s.rank; ++j) d += t[j] * b[j];
    const float lb = s.lora_bias != nullptr ? s.lora_bias[o] : 0.0f;
    if (s.kind == kAdd) {
      y += s.scale * (d + lb);
    } else {
      const float bb = s.base_bias != nullptr ? s.base_bias[o] : 0.0f;
      const float g = s.dora_scale[o];
      if (s.kind == kDora) {
        y = (y - bb + s.scale * d) * g + s.scale * lb + bb;
      } else {
        y = (y - bb) / g + bb + s.scale * (d + lb);
      }
    }
  }
  StoreAct(p.y, yi, p.act, y);
}

#if defined(__CUDACC__) || defined(LORASERVE_WITH_CUDA)
// Launches shrink then expand on `stream` (a cudaStream_t); every pointer in `p` and in the
// segment and entry arrays it points to is device memory. Returns a CUDA error string or nullptr.
const char* Launch(const Problem& p, void* stream);
#endif

}  // namespace loraserve::core::sgmv

#endif  // LORASERVE_CORE_LORA_SGMV_H_
