// The plan of sgmv.h's two passes, and their host emulation (MakeSgmvHostLoraKernel).
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include "core/lora/lora_kernel.h"
#include "core/lora/sgmv_plan.h"

namespace loraserve::core {
namespace {

bool TakesTensor(const at::Tensor* t, const at::Device& device) {
  return t == nullptr || (t->defined() && t->device() == device && t->scalar_type() == at::kFloat &&
                          t->is_contiguous());
}

const float* FloatPtr(const at::Tensor* t) { return t == nullptr ? nullptr : t->data_ptr<float>(); }

int32_t ActOf(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return sgmv::kF32;
    case at::kBFloat16:
      return sgmv::kBF16;
    case at::kHalf:
      return sgmv::kF16;
    default:
      return -1;
  }
}

}  // namespace

bool BuildSgmvPlan(const at::Tensor& x, const at::Tensor& y, const std::vector<LoraSegment>& segments,
                   SgmvPlan* plan) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const at::Device device = x.device();
  if (x.dim() != 2 || y.dim() != 2 || x.size(0) != y.size(0) || !x.is_contiguous() ||
      !y.is_contiguous() || y.device() != device || x.scalar_type() != y.scalar_type() ||
      ActOf(x.scalar_type()) < 0 || x.size(0) >= kMax) {
    return false;
  }
  *plan = SgmvPlan();
  plan->act = ActOf(x.scalar_type());
  // (row, entry), sorted by row below; entries are made segment by segment, so a row's entries
  // keep list order.
  std::vector<std::pair<int32_t, int32_t>> by_row;
  for (const LoraSegment& s : segments) {
    const RowSet& rows = *s.rows;
    if (rows.size() == 0) continue;
    const bool dora = s.kind != SegmentKind::kAdd;
    if (!TakesTensor(s.a, device) || !TakesTensor(s.b, device) || !TakesTensor(s.bias, device) ||
        (dora && (s.dora_scale == nullptr || !TakesTensor(s.dora_scale, device) ||
                  !TakesTensor(s.base_bias, device))) ||
        s.a->dim() != 2 || s.b->dim() != 2 || s.a->size(1) != x.size(1) || s.b->size(0) != y.size(1) ||
        s.b->size(1) != s.a->size(0)) {
      return false;
    }
    sgmv::Segment seg;
    seg.a = s.a->data_ptr<float>();
    seg.b = s.b->data_ptr<float>();
    seg.lora_bias = FloatPtr(s.bias);
    seg.dora_scale = dora ? FloatPtr(s.dora_scale) : nullptr;
    seg.base_bias = dora ? FloatPtr(s.base_bias) : nullptr;
    seg.rank = static_cast<int32_t>(s.a->size(0));
    seg.kind = s.kind == SegmentKind::kAdd ? sgmv::kAdd
               : s.kind == SegmentKind::kDora ? sgmv::kDora
                                               : sgmv::kUndoDora;
    seg.scale = static_cast<float>(s.scale);
    const int32_t seg_index = static_cast<int32_t>(plan->segments.size());
    plan->segments.push_back(seg);
    at::Tensor index;
    if (rows.index.defined()) {
      index = (rows.index_host.defined() ? rows.index_host : rows.index).to(at::kCPU, at::kLong).contiguous();
    }
    const int64_t* idx = index.defined() ? index.data_ptr<int64_t>() : nullptr;
    for (int64_t k = 0; k < rows.size(); ++k) {
      const int64_t row = idx != nullptr ? idx[k] : rows.begin + k;
      if (row < 0 || row >= x.size(0) || plan->t_size + seg.rank >= kMax) return false;
      by_row.emplace_back(static_cast<int32_t>(row), static_cast<int32_t>(plan->entries.size()));
      plan->entries.push_back({static_cast<int32_t>(row), seg_index, static_cast<int32_t>(plan->t_size), 0});
      plan->t_size += seg.rank;
    }
  }
  std::stable_sort(by_row.begin(), by_row.end(),
                   [](const auto& l, const auto& r) { return l.first < r.first; });
  for (size_t k = 0; k < by_row.size(); ++k) {
    if (k == 0 || by_row[k].first != by_row[k - 1].first) {
      plan->row_ids.push_back(by_row[k].first);
      plan->row_start.push_back(static_cast<int32_t>(k));
    }
    plan->row_entries.push_back(by_row[k].second);
  }
  plan->row_start.push_back(static_cast<int32_t>(by_row.size()));
  return true;
}

sgmv::Problem ProblemOf(const SgmvPlan& plan, const at::Tensor& x, at::Tensor& y, float* t) {
  sgmv::Problem p;
  p.segments = plan.segments.data();
  p.entries = plan.entries.data();
  p.num_entries = static_cast<int32_t>(plan.entries.size());
  p.row_ids = plan.row_ids.data();
  p.row_start = plan.row_start.data();
  p.row_entries = plan.row_entries.data();
  p.num_rows = static_cast<int32_t>(plan.row_ids.size());
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.t = t;
  p.in = x.size(1);
  p.out = y.size(1);
  p.act = plan.act;
  return p;
}

namespace {

// sgmv.h's element functions in plain loops over the same plan the CUDA kernels get.
class SgmvHostLoraKernel : public LoraKernel {
 public:
  void AddSegments(const at::Tensor& x, at::Tensor& y,
                   const std::vector<LoraSegment>& segments) const override {
    SgmvPlan plan;
    if (!x.device().is_cpu() || !BuildSgmvPlan(x, y, segments, &plan)) {
      return gather_->AddSegments(x, y, segments);
    }
    if (plan.entries.empty()) return;
    std::vector<float> t(static_cast<size_t>(plan.t_size));
    const sgmv::Problem p = ProblemOf(plan, x, y, t.data());
    for (int32_t e = 0; e < p.num_entries; ++e) {
      const sgmv::Entry& en = plan.entries[static_cast<size_t>(e)];
      for (int32_t j = 0; j < plan.segments[static_cast<size_t>(en.segment)].rank; ++j) {
        t[static_cast<size_t>(en.t_offset + j)] = sgmv::ShrinkPartial(p, e, j, 0, 1);
      }
    }
    for (int32_t r = 0; r < p.num_rows; ++r) {
      for (int64_t o = 0; o < p.out; ++o) sgmv::ExpandElement(p, r, o);
    }
  }

 private:
  std::unique_ptr<LoraKernel> gather_ = MakeGatherLoraKernel();
};

}  // namespace

std::unique_ptr<LoraKernel> MakeSgmvHostLoraKernel() { return std::make_unique<SgmvHostLoraKernel>(); }

}  // namespace loraserve::core
