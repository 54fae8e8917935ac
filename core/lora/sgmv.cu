// The two passes of sgmv.h as CUDA kernels: shrink with one block per (row, segment) entry and a
// warp per rank index (lanes stride over `in`, coalesced reads of x and A, shuffle reduction);
// expand with a thread per (row, output) over the row's entries. One launch each per call.
#include <cuda_runtime.h>

#include "core/lora/sgmv.h"

namespace loraserve::core::sgmv {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void ShrinkKernel(Problem p) {
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const Entry en = p.entries[e];
  const int32_t rank = p.segments[en.segment].rank;
  for (int32_t j = warp; j < rank; j += kWarps) {
    float acc = ShrinkPartial(p, e, j, lane, 32);
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) p.t[en.t_offset + j] = acc;
  }
}

__global__ void ExpandKernel(Problem p) {
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (o < p.out) ExpandElement(p, static_cast<int32_t>(blockIdx.x), o);
}

}  // namespace

const char* Launch(const Problem& p, void* stream) {
  if (p.num_entries == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  ShrinkKernel<<<static_cast<unsigned>(p.num_entries), kThreads, 0, s>>>(p);
  const dim3 grid(static_cast<unsigned>(p.num_rows), static_cast<unsigned>((p.out + kThreads - 1) / kThreads));
  ExpandKernel<<<grid, kThreads, 0, s>>>(p);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace loraserve::core::sgmv
