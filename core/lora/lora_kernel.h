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
  at::Tensor index_host;  // optional CPU copy of a device `index` (kernels that plan on the host)

  int64_t size() const { return index.defined() ? index.size(0) : end - begin; }
};

// What a segment does to y on its rows, with d = x·Aᵀ·Bᵀ computed in fp32 and lb its LoRA bias:
//   kAdd:      y += scale·(d + lb)
//   kDora:     y = (y − bb + scale·d)·g + scale·lb + bb      (DoRA on the adapter's own rows; y
//              holds the base output x·Wᵀ + bb, g = dora_scale)
//   kUndoDora: y = (y − bb)/g + bb + scale·(d + lb)         (rows not of a merged DoRA adapter:
//              the merged weight's rescaling undone, then scale = −s removes its delta)
// bb is the linear's own bias (base_bias, nullptr when it has none).
enum class SegmentKind { kAdd, kDora, kUndoDora };

struct LoraSegment {
  const RowSet* rows = nullptr;
  const at::Tensor* a = nullptr;     // [r, in] fp32
  const at::Tensor* b = nullptr;     // [out, r] fp32
  const at::Tensor* bias = nullptr;  // [out] fp32 or nullptr
  double scale = 1.0;
  SegmentKind kind = SegmentKind::kAdd;
  const at::Tensor* dora_scale = nullptr;  // [out] fp32, for kDora and kUndoDora
  const at::Tensor* base_bias = nullptr;   // [out] fp32 or nullptr, for kDora and kUndoDora
};

// Thread-compatible; stateless implementations are thread-safe.
class LoraKernel {
 public:
  virtual ~LoraKernel() = default;
  // Applies every segment to `y` ([T, out], model dtype) from `x` ([T, in]). Products are
  // computed in fp32. A row's segments apply in list order (kAdd segments commute; callers put a
  // row's kUndoDora segments first and its kDora segment last).
  virtual void AddSegments(const at::Tensor& x, at::Tensor& y,
                           const std::vector<LoraSegment>& segments) const = 0;
};

// Generic implementation (any device): one pair of GEMMs per segment over the gathered rows (a
// view, no copy, for contiguous ranges).
std::unique_ptr<LoraKernel> MakeGatherLoraKernel();

// CPU implementation: segments of at most a few rows (decode) computed row by row in one parallel
// loop from the adapter weights, larger ones as in the gather kernel; tensors it cannot take (other
// devices, dtypes) and lists with DoRA segments go to the gather kernel. Same results up to float
// rounding.
std::unique_ptr<LoraKernel> MakeCpuLoraKernel();

// The CUDA kernels' algorithm (core/lora/sgmv.h: one shrink over all (row, segment) entries, one
// expand over all rows) run on the host from the same plan, one element at a time. For tests: it
// checks the planning and index arithmetic of the CUDA path on machines without a GPU.
std::unique_ptr<LoraKernel> MakeSgmvHostLoraKernel();

// CUDA: the same plan launched as two kernels on the current stream (lora_kernel_cuda.cc), tensors
// it cannot take handed to the gather kernel. nullptr when this build has no CUDA.
std::unique_ptr<LoraKernel> MakeCudaLoraKernel();

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_KERNEL_H_
