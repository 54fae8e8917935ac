// The grouped LoRA product behind a small interface, so a CUDA segmented-GEMM kernel (Punica /
// S-LoRA style) can replace the generic implementation without touching the model or scheduler.
#ifndef LORASERVE_CORE_LORA_LORA_KERNEL_H_
#define LORASERVE_CORE_LORA_LORA_KERNEL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace loraserve::core {

// The rows of a packed batch that one adapter's product applies to: either the contiguous range
// [begin, end) or an explicit int64 index tensor.
struct RowSet {
  int64_t begin = 0;
  int64_t end = 0;
  at::Tensor index;  // defined → use it instead of the range

  int64_t size() const { return index.defined() ? index.size(0) : end - begin; }
};

// y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ (+ scale · bias) for each segment.
struct LoraSegment {
  const RowSet* rows = nullptr;
  const at::Tensor* a = nullptr;     // [r, in] fp32
  const at::Tensor* b = nullptr;     // [out, r] fp32
  const at::Tensor* bias = nullptr;  // [out] fp32 or nullptr
  double scale = 1.0;
};

// Thread-compatible; stateless implementations are thread-safe.
class LoraKernel {
 public:
  virtual ~LoraKernel() = default;
  // Adds every segment's product into `y` ([T, out], model dtype) from `x` ([T, in]). Products
  // are computed in fp32.
  virtual void AddSegments(const at::Tensor& x, at::Tensor& y,
                           const std::vector<LoraSegment>& segments) const = 0;
};

// Generic implementation (any device): one pair of GEMMs per segment over the gathered rows (a
// view, no copy, for contiguous ranges).
std::unique_ptr<LoraKernel> MakeGatherLoraKernel();

// CPU implementation: segments of at most a few rows (decode) computed row by row in one parallel
// loop from the adapter weights, larger ones as in the gather kernel; tensors it cannot take (other
// devices, dtypes) go to the gather kernel. Same results up to float rounding.
std::unique_ptr<LoraKernel> MakeCpuLoraKernel();

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_KERNEL_H_
