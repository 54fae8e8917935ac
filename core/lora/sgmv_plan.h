// Turning a LoraKernel call (x, y, segments) into the flat arrays of sgmv.h: one entry per
// (row, segment), ranks packed back to back in t, each distinct row with its entries in list
// order. Shared by the host emulation and the CUDA wrapper.
#ifndef LORASERVE_CORE_LORA_SGMV_PLAN_H_
#define LORASERVE_CORE_LORA_SGMV_PLAN_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/lora/lora_kernel.h"
#include "core/lora/sgmv.h"

namespace loraserve::core {

struct SgmvPlan {
  std::vector<sgmv::Segment> segments;
  std::vector<sgmv::Entry> entries;
  std::vector<int32_t> row_ids;
  std::vector<int32_t> row_start;
  std::vector<int32_t> row_entries;
  int64_t t_size = 0;  // floats of t
  int32_t act = sgmv::kF32;
};

// False when the call is not one the kernels take (x/y not contiguous or of different dtypes or
// devices, an activation dtype other than fp32/bf16/fp16, adapter tensors not contiguous fp32 on
// x's device, sizes beyond int32); the caller then uses the gather kernel.
bool BuildSgmvPlan(const at::Tensor& x, const at::Tensor& y, const std::vector<LoraSegment>& segments,
                   SgmvPlan* plan);

// The problem over `plan`'s own (host) arrays, x, y and t; a device caller replaces the array
// pointers by their device copies.
sgmv::Problem ProblemOf(const SgmvPlan& plan, const at::Tensor& x, at::Tensor& y, float* t);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_SGMV_PLAN_H_
