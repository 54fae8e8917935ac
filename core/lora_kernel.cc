#include "core/lora_kernel.h"

#include <ATen/ATen.h>

namespace loraserve::core {
namespace {

class GatherLoraKernel : public LoraKernel {
 public:
  void AddSegments(const at::Tensor& x, at::Tensor& y,
                   const std::vector<LoraSegment>& segments) const override {
    const bool fp32 = x.scalar_type() == at::kFloat;
    for (const LoraSegment& s : segments) {
      if (s.rows->size() == 0) continue;
      const RowSet& rows = *s.rows;
      at::Tensor xs = rows.index.defined() ? x.index_select(0, rows.index)
                                           : x.narrow(0, rows.begin, rows.end - rows.begin);
      if (!fp32) xs = xs.to(at::kFloat);
      at::Tensor d = at::mm(at::mm(xs, s.a->t()), s.b->t());
      if (s.bias != nullptr) d.add_(*s.bias);
      if (!fp32) d = d.to(y.scalar_type());
      if (rows.index.defined()) {
        y.index_add_(0, rows.index, d, s.scale);
      } else {
        y.narrow(0, rows.begin, rows.end - rows.begin).add_(d, s.scale);
      }
    }
  }
};

}  // namespace

std::unique_ptr<LoraKernel> MakeGatherLoraKernel() { return std::make_unique<GatherLoraKernel>(); }

}  // namespace loraserve::core
