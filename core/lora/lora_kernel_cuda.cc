// The CUDA LoraKernel: the plan of sgmv_plan.h packed into one pinned host buffer, copied to the
// device with one asynchronous copy on the current stream, and sgmv.cu's two kernels launched
// after it on the same stream. No host synchronisation (the pinned buffer is kept by LibTorch's
// caching host allocator until the copy has run). Compiled in the CUDA flavour only.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <memory>

#include "core/lora/lora_kernel.h"
#include "core/lora/sgmv.h"
#include "core/lora/sgmv_plan.h"

namespace loraserve::core {
namespace {

constexpr size_t kAlign = 16;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

class CudaLoraKernel : public LoraKernel {
 public:
  void AddSegments(const at::Tensor& x, at::Tensor& y,
                   const std::vector<LoraSegment>& segments) const override {
    SgmvPlan plan;
    if (!x.device().is_cuda() || !BuildSgmvPlan(x, y, segments, &plan)) {
      return gather_->AddSegments(x, y, segments);
    }
    if (plan.entries.empty()) return;
    const c10::cuda::CUDAGuard guard(x.device());
    // One buffer: segments | entries | row_ids | row_start | row_entries.
    const size_t seg_bytes = plan.segments.size() * sizeof(sgmv::Segment);
    const size_t entry_bytes = plan.entries.size() * sizeof(sgmv::Entry);
    const size_t ids_bytes = plan.row_ids.size() * sizeof(int32_t);
    const size_t start_bytes = plan.row_start.size() * sizeof(int32_t);
    const size_t re_bytes = plan.row_entries.size() * sizeof(int32_t);
    const size_t o_entries = AlignUp(seg_bytes), o_ids = o_entries + AlignUp(entry_bytes),
                 o_start = o_ids + AlignUp(ids_bytes), o_re = o_start + AlignUp(start_bytes),
                 total = o_re + AlignUp(re_bytes);
    at::Tensor host = at::empty({static_cast<int64_t>(total)},
                                at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    auto* h = static_cast<uint8_t*>(host.data_ptr());
    std::memcpy(h, plan.segments.data(), seg_bytes);
    std::memcpy(h + o_entries, plan.entries.data(), entry_bytes);
    std::memcpy(h + o_ids, plan.row_ids.data(), ids_bytes);
    std::memcpy(h + o_start, plan.row_start.data(), start_bytes);
    std::memcpy(h + o_re, plan.row_entries.data(), re_bytes);
    at::Tensor dev = host.to(x.device(), /*non_blocking=*/true);
    at::Tensor t = at::empty({plan.t_size}, x.options().dtype(at::kFloat));
    const auto* d = static_cast<const uint8_t*>(dev.data_ptr());
    sgmv::Problem p = ProblemOf(plan, x, y, t.data_ptr<float>());
    p.segments = reinterpret_cast<const sgmv::Segment*>(d);
    p.entries = reinterpret_cast<const sgmv::Entry*>(d + o_entries);
    p.row_ids = reinterpret_cast<const int32_t*>(d + o_ids);
    p.row_start = reinterpret_cast<const int32_t*>(d + o_start);
    p.row_entries = reinterpret_cast<const int32_t*>(d + o_re);
    const char* err = sgmv::Launch(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
    TORCH_CHECK(err == nullptr, "LoRA SGMV kernel launch failed: ", err);
  }

 private:
  std::unique_ptr<LoraKernel> gather_ = MakeGatherLoraKernel();
};

}  // namespace

std::unique_ptr<LoraKernel> MakeCudaLoraKernel() { return std::make_unique<CudaLoraKernel>(); }

}  // namespace loraserve::core
