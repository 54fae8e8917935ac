#include "core/lora/lora_model.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"
#include "core/io/file_util.h"
#include "core/io/json_file.h"
#include "core/io/tensor_io.h"
#include "core/lora/lora_compose.h"

namespace loraserve::core {

struct LoraModel::State {
  // The checkpoint's tensors, captured at construction. Merged weights are always recomputed from
  // these, and restoring them restores the model bit for bit.
  std::vector<at::Tensor> original_weight;
  std::vector<at::Tensor> original_bias;
  at::Tensor original_embed;
  at::Tensor original_head;  // the embedding tensor itself when tied
  int head_id = 0;

  std::vector<std::shared_ptr<const LoraAdapter>> merged;  // merge order
  // Derived from `merged`.
  std::vector<std::vector<const LoraAdapter*>> merged_by_linear;
  std::vector<const LoraAdapter*> merged_embedding;
  const LoraAdapter* merged_head = nullptr;

  void Rebuild() {
    for (auto& v : merged_by_linear) v.clear();
    merged_embedding.clear();
    merged_head = nullptr;
    for (const auto& a : merged) {
      for (const LoraModule& m : a->modules()) {
        if (m.is_embedding()) merged_embedding.push_back(a.get());
      }
      for (int id : TouchedLinears(*a)) merged_by_linear[id].push_back(a.get());
      if (a->head().defined()) merged_head = a.get();
    }
  }
};

namespace {

// Per-forward hooks: which adapter each token row uses, and the merge state to correct for.
class BatchHooks : public ForwardHooks {
 public:
  BatchHooks(const LoraModel::State& state, const LoraKernel& kernel,
             absl::Span<const SequenceInput> batch,
             const std::vector<std::shared_ptr<const LoraAdapter>>& adapters)
      : state_(state), kernel_(kernel), adapters_(adapters), device_(state.original_embed.device()) {
    std::vector<std::pair<const LoraAdapter*, int64_t>> runs;
    for (size_t i = 0; i < batch.size(); ++i) {
      runs.emplace_back(i < adapters.size() ? adapters[i].get() : nullptr,
                        static_cast<int64_t>(batch[i].tokens.size()));
    }
    GroupRows(runs);
  }

  // The hooks of one head call: row i is the i-th selected position and `row_adapters[i]` its
  // adapter; rows flagged in `no_undo` take no merged-adapter corrections.
  BatchHooks(const LoraModel::State& state, const LoraKernel& kernel, const at::Device& device,
             const std::vector<const LoraAdapter*>& row_adapters, std::vector<bool> no_undo)
      : state_(state), kernel_(kernel), device_(device), no_undo_(std::move(no_undo)) {
    std::vector<std::pair<const LoraAdapter*, int64_t>> runs;
    for (const LoraAdapter* a : row_adapters) runs.emplace_back(a, 1);
    GroupRows(runs);
  }

  at::Tensor OnLinear(const LinearModule& module, const at::Tensor& x, at::Tensor y) override {
    const int id = module.id;
    const auto& merged = state_.merged_by_linear[id];
    // Biases in fp32 for DoRA segments (which work on y − bias), converted only when one needs
    // them: the served (possibly merged) bias, and the checkpoint's.
    at::Tensor served_bias, checkpoint_bias;
    auto fp32 = [](const at::Tensor& b, at::Tensor& cache) -> const at::Tensor* {
      if (!b.defined()) return nullptr;
      if (!cache.defined()) cache = b.to(at::kFloat);
      return &cache;
    };
    // 1. Rows not belonging to a merged adapter X get X's effect removed (DoRA: its rescaling
    //    undone against the served bias, so these come before every other segment on those rows).
    // bias="all" adapters: (rows, saved bias − checkpoint bias, sign) to add after the products.
    std::vector<LoraSegment> segments;
    std::vector<std::tuple<const RowSet*, const at::Tensor*, double>> bias_adds;
    for (const LoraAdapter* mx : merged) {
      const LoraModule* m = mx->ForLinear(id);
      const RowSet& others = RowsNotOf(mx);
      if (others.size() == 0) continue;
      if (mx->SavedBias(id).defined()) bias_adds.emplace_back(&others, &mx->SavedBias(id), -1.0);
      if (m == nullptr) continue;
      LoraSegment seg{&others, &m->a, &m->b, m->lora_bias.defined() ? &m->lora_bias : nullptr, -m->scaling};
      if (m->is_dora()) {
        // y = g⊙(x(W+ΔW)ᵀ) + b  →  x(W+ΔW)ᵀ + b = (y − b)/g + b, then −ΔW.
        seg.kind = SegmentKind::kUndoDora;
        seg.dora_scale = &m->dora_scale;
        seg.base_bias = fp32(module.bias, served_bias);
      }
      segments.push_back(seg);
    }
    const size_t undo_count = segments.size();
    // 2. Each adapter's own LoRA product on its rows; DoRA ones last (y = b + g ⊙ (xWᵀ + s·xAᵀBᵀ)
    //    with b the adapter's bias: its saved one, else the checkpoint's, which is what y holds
    //    once the merged adapters are undone and the saved-bias differences added).
    std::vector<LoraSegment> dora;
    for (const Group& g : groups_) {
      if (IsMergedHere(merged, g.adapter)) continue;
      const at::Tensor& saved = g.adapter->SavedBias(id);
      if (saved.defined()) bias_adds.emplace_back(&g.rows, &saved, 1.0);
      const LoraModule* m = g.adapter->ForLinear(id);
      if (m == nullptr) continue;
      LoraSegment seg{&g.rows, &m->a, &m->b, m->lora_bias.defined() ? &m->lora_bias : nullptr, m->scaling};
      if (m->is_dora()) {
        seg.kind = SegmentKind::kDora;
        seg.dora_scale = &m->dora_scale;
        seg.base_bias = saved.defined() ? &saved : fp32(state_.original_bias[id], checkpoint_bias);
        dora.push_back(seg);
        continue;
      }
      segments.push_back(seg);
    }
    segments.insert(segments.end(), dora.begin(), dora.end());
    // 3. Saved biases replace the checkpoint's: their differences are added on their rows, after
    //    the undo segments and before the DoRA ones (additive segments do not care).
    auto add_biases = [&]() {
      for (const auto& [rows, saved, sign] : bias_adds) {
        at::Tensor delta = (*saved - state_.original_bias[id].to(at::kFloat)) * sign;
        Scatter(y, *rows, (Gather(y, *rows).to(at::kFloat) + delta).to(y.scalar_type()));
      }
    };
    if (!dora.empty() && !bias_adds.empty()) {
      if (undo_count > 0) {
        kernel_.AddSegments(x, y, std::vector<LoraSegment>(segments.begin(), segments.begin() + undo_count));
      }
      add_biases();
      kernel_.AddSegments(x, y, std::vector<LoraSegment>(segments.begin() + undo_count, segments.end()));
      return y;
    }
    if (!segments.empty()) kernel_.AddSegments(x, y, segments);
    add_biases();
    return y;
  }

  at::Tensor OnEmbedding(const at::Tensor& ids, at::Tensor y) override {
    for (const LoraAdapter* mx : state_.merged_embedding) {
      const RowSet& others = RowsNotOf(mx);
      if (others.size() > 0) AddEmbeddingLora(*mx->embedding(), ids, others, -1.0, y);
    }
    for (const Group& g : groups_) {
      if (!g.adapter->embedding_base().defined()) continue;
      Scatter(y, g.rows, at::embedding(g.adapter->embedding_base(), Gather(ids, g.rows)));
    }
    for (const Group& g : groups_) {
      const LoraModule* m = g.adapter->embedding();
      if (m == nullptr) continue;
      if (std::find(state_.merged_embedding.begin(), state_.merged_embedding.end(), g.adapter) !=
          state_.merged_embedding.end()) {
        continue;
      }
      AddEmbeddingLora(*m, ids, g.rows, 1.0, y);
    }
    return y;
  }

  at::Tensor OnHead(const at::Tensor& hidden, const at::Tensor& rows, at::Tensor logits) override {
    // Which head each selected row needs: its adapter's own (modules_to_save), or the checkpoint's
    // when another adapter's head is merged.
    std::map<const at::Tensor*, std::vector<int64_t>> by_head;
    at::Tensor rows_cpu = rows.to(at::kCPU);
    const int64_t* r = rows_cpu.data_ptr<int64_t>();
    const int64_t n = rows_cpu.size(0);
    std::vector<const LoraAdapter*> row_adapters(n, nullptr);
    std::vector<bool> replaced(n, false);
    for (int64_t i = 0; i < n; ++i) {
      const int g = row_group_[r[i]];
      const LoraAdapter* a = g >= 0 ? groups_[g].adapter : nullptr;
      row_adapters[i] = a;
      const at::Tensor* head = nullptr;
      if (a != nullptr && a->head().defined()) {
        if (a != state_.merged_head) head = &a->head();
      } else if (state_.merged_head != nullptr) {
        head = &state_.original_head;
      }
      replaced[i] = head != nullptr || (a != nullptr && a == state_.merged_head);
      if (head != nullptr) by_head[head].push_back(i);
    }
    for (const auto& [head, sel] : by_head) {
      at::Tensor idx = at::tensor(at::ArrayRef<int64_t>(sel), at::kLong).to(logits.device());
      logits.index_copy_(0, idx, at::linear(hidden.index_select(0, idx), *head));
    }
    // LoRA on lm_head itself: the head is a linear like the others, run here on the selected rows
    // only (rows with a replaced head tensor take no merged-adapter corrections).
    const int hid = state_.head_id;
    bool head_lora = !state_.merged_by_linear[hid].empty();
    for (const Group& g : groups_) head_lora = head_lora || g.adapter->ForLinear(hid) != nullptr;
    if (!head_lora) return logits;
    LinearModule head;
    head.id = hid;
    BatchHooks selected(state_, kernel_, device_, row_adapters, std::move(replaced));
    return selected.OnLinear(head, hidden, logits);
  }

 private:
  struct Group {
    const LoraAdapter* adapter;
    RowSet rows;
  };

  RowSet MakeRowSet(const std::vector<std::pair<int64_t, int64_t>>& ranges) const {
    RowSet rs;
    if (ranges.size() == 1) {
      rs.begin = ranges[0].first;
      rs.end = ranges[0].second;
      return rs;
    }
    std::vector<int64_t> idx;
    for (const auto& [b, e] : ranges) {
      for (int64_t i = b; i < e; ++i) idx.push_back(i);
    }
    if (idx.empty()) return rs;
    rs.index = at::tensor(at::ArrayRef<int64_t>(idx), at::kLong);
    if (!device_.is_cpu()) {
      rs.index_host = rs.index;
      rs.index = rs.index.to(device_);
    }
    return rs;
  }

  // Groups consecutive row runs (adapter, row count) by adapter.
  void GroupRows(const std::vector<std::pair<const LoraAdapter*, int64_t>>& runs) {
    std::map<const LoraAdapter*, int> group_of;
    std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges;
    int64_t row = 0;
    for (const auto& [a, n] : runs) {
      int g = -1;
      if (a != nullptr) {
        auto it = group_of.find(a);
        if (it == group_of.end()) {
          it = group_of.emplace(a, static_cast<int>(groups_.size())).first;
          groups_.push_back({a, RowSet()});
          ranges.emplace_back();
        }
        g = it->second;
        auto& rs = ranges[g];
        if (!rs.empty() && rs.back().second == row) {
          rs.back().second = row + n;
        } else {
          rs.emplace_back(row, row + n);
        }
      }
      row_group_.insert(row_group_.end(), n, g);
      row += n;
    }
    total_rows_ = row;
    for (size_t g = 0; g < groups_.size(); ++g) groups_[g].rows = MakeRowSet(ranges[g]);
  }

  // Rows whose adapter is not `a` (cached per adapter).
  const RowSet& RowsNotOf(const LoraAdapter* a) {
    auto it = not_of_.find(a);
    if (it != not_of_.end()) return it->second;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (int64_t i = 0; i < total_rows_; ++i) {
      const int g = row_group_[i];
      if ((g >= 0 && groups_[g].adapter == a) || (!no_undo_.empty() && no_undo_[i])) continue;
      if (!ranges.empty() && ranges.back().second == i) {
        ranges.back().second = i + 1;
      } else {
        ranges.emplace_back(i, i + 1);
      }
    }
    return not_of_.emplace(a, MakeRowSet(ranges)).first->second;
  }

  static bool IsMergedHere(const std::vector<const LoraAdapter*>& merged, const LoraAdapter* a) {
    return std::find(merged.begin(), merged.end(), a) != merged.end();
  }

  static at::Tensor Gather(const at::Tensor& t, const RowSet& rows) {
    return rows.index.defined() ? t.index_select(0, rows.index) : t.narrow(0, rows.begin, rows.size());
  }
  static void Scatter(at::Tensor& t, const RowSet& rows, const at::Tensor& values) {
    if (rows.index.defined()) {
      t.index_copy_(0, rows.index, values);
    } else {
      t.narrow(0, rows.begin, rows.size()).copy_(values);
    }
  }

  // y[rows] += sign · s · A_e[:, ids[rows]]ᵀ · B_eᵀ. DoRA (g = dora_scale, per hidden dimension):
  // an adapter's own rows get y = g ⊙ (y + s·…), a merged adapter's undo y = y / g − s·….
  void AddEmbeddingLora(const LoraModule& m, const at::Tensor& ids, const RowSet& rows, double sign,
                        at::Tensor& y) {
    at::Tensor after_a = at::embedding(m.a.t(), Gather(ids, rows));  // [n, r]
    at::Tensor v = Gather(y, rows).to(at::kFloat);
    if (m.is_dora() && sign < 0) v = v / m.dora_scale;
    v = v + at::mm(after_a, m.b.t()) * (sign * m.scaling);
    if (m.is_dora() && sign > 0) v = v * m.dora_scale;
    Scatter(y, rows, v.to(y.scalar_type()));
  }

  const LoraModel::State& state_;
  const LoraKernel& kernel_;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters_;  // keeps them alive for the forward
  std::vector<Group> groups_;
  std::vector<int> row_group_;
  int64_t total_rows_ = 0;
  std::map<const LoraAdapter*, RowSet> not_of_;
  const at::Device device_;  // the model's: row index tensors live there
  std::vector<bool> no_undo_;  // head calls: rows that RowsNotOf leaves out
};

}  // namespace

LoraModel::LoraModel(Model* model, std::unique_ptr<LoraKernel> kernel)
    : model_(model), state_(std::make_unique<State>()), kernel_(std::move(kernel)) {
  if (kernel_ == nullptr) {
    const at::Device device = model_->options().device;
    if (device.is_cpu()) {
      kernel_ = MakeCpuLoraKernel();
    } else if (device.is_cuda()) {
      kernel_ = MakeCudaLoraKernel();  // nullptr without the CUDA flavour
    }
    if (kernel_ == nullptr) kernel_ = MakeGatherLoraKernel();
  }
  for (const LinearModule& lm : model_->linears()) {
    state_->original_weight.push_back(lm.weight);
    state_->original_bias.push_back(lm.bias);
  }
  state_->original_embed = model_->embedding();
  state_->head_id = static_cast<int>(model_->linears().size()) - 1;
  state_->original_head = model_->linears().back().weight;
  state_->merged_by_linear.resize(model_->linears().size());
}

LoraModel::~LoraModel() = default;

std::unique_ptr<ForwardHooks> LoraModel::MakeHooks(
    absl::Span<const SequenceInput> batch,
    const std::vector<std::shared_ptr<const LoraAdapter>>& adapters) const {
  return std::make_unique<BatchHooks>(*state_, *kernel_, batch, adapters);
}

absl::StatusOr<at::Tensor> LoraModel::Forward(
    absl::Span<const SequenceInput> batch,
    const std::vector<std::shared_ptr<const LoraAdapter>>& adapters, KvCache* cache,
    LogitsMode mode) const {
  if (adapters.size() != batch.size()) {
    return absl::InvalidArgumentError("one adapter entry (or null) per sequence is required");
  }
  auto hooks = MakeHooks(batch, adapters);
  return model_->Forward(batch, cache, mode, hooks.get());
}

absl::StatusOr<at::Tensor> LoraModel::Score(absl::Span<const int32_t> tokens,
                                            const std::shared_ptr<const LoraAdapter>& adapter) const {
  // The hooks only need the batch's shape: one sequence of tokens.size() rows.
  const SequenceInput shape{0, std::vector<int32_t>(tokens.begin(), tokens.end())};
  // The base with nothing merged needs no hooks (and may take the model's small CPU forward).
  std::unique_ptr<ForwardHooks> hooks;
  if (adapter != nullptr || !state_->merged.empty()) hooks = MakeHooks(absl::MakeConstSpan(&shape, 1), {adapter});
  LORASERVE_ASSIGN_OR_RETURN(at::Tensor logits, model_->Score(tokens, hooks.get()));
  // Never hand out NaN/Inf logits (an adapter whose products overflow at run time): this request
  // fails, nothing else does.
  if (!AllFinite(logits)) {
    return absl::InternalError(absl::StrCat(
        "the model produced non-finite logits for ", adapter ? "adapter " + adapter->name() : "the base model",
        " (its products overflow float on this input)"));
  }
  return logits;
}

at::Tensor LoraModel::BaseWeight(int id) const { return state_->original_weight.at(id); }

std::function<at::Tensor(int)> LoraModel::BaseWeightFn() const {
  const State* s = state_.get();
  return [s](int id) { return id < 0 ? s->original_embed : s->original_weight.at(id); };
}

bool LoraModel::IsMerged(const std::string& name) const {
  for (const auto& a : state_->merged) {
    if (a->name() == name) return true;
  }
  return false;
}

std::vector<std::string> LoraModel::MergedNames() const {
  std::vector<std::string> out;
  for (const auto& a : state_->merged) out.push_back(a->name());
  return out;
}

absl::StatusOr<bool> LoraModel::Merge(std::shared_ptr<const LoraAdapter> adapter) {
  if (adapter == nullptr) return absl::InvalidArgumentError("no adapter to merge");
  if (IsMerged(adapter->name())) return false;
  State& s = *state_;
  for (const LoraModule& m : adapter->modules()) {
    if (m.is_embedding()) {
      for (const LoraAdapter* other : s.merged_embedding) {
        if (m.is_dora() || other->embedding()->is_dora()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "cannot merge ", adapter->name(), ": the embedding is already merged with ", other->name(),
              " and one of them is DoRA (unmerge ", other->name(), " first)"));
        }
      }
      continue;
    }
    for (const LoraAdapter* other : s.merged_by_linear[m.linear_id]) {
      const LoraModule* om = other->ForLinear(m.linear_id);
      if (m.is_dora() || (om != nullptr && om->is_dora())) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot merge ", adapter->name(), ": module ", m.name, " is already merged with ",
            other->name(), " and one of them is DoRA (unmerge ", other->name(), " first)"));
      }
    }
    if (m.is_dora() && m.lora_bias.defined()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot merge ", adapter->name(), ": DoRA together with lora_bias is not mergeable"));
    }
  }
  if (adapter->head().defined() && s.merged_head != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot merge ", adapter->name(), ": ", s.merged_head->name(),
        " already replaced the output head (modules_to_save); unmerge it first"));
  }
  std::vector<std::shared_ptr<const LoraAdapter>> next = s.merged;
  next.push_back(adapter);
  // Compute everything first; commit only if every merged tensor is finite (safe merge).
  struct Pending {
    int id;
    at::Tensor w, b;
  };
  std::vector<Pending> pending;
  at::Tensor new_embed;
  absl::Status computed = CallTorch("merging adapter " + adapter->name(), [&]() -> absl::Status {
    c10::InferenceMode guard;
    for (int id : TouchedLinears(*adapter)) {
      auto [w, b] = ComposeLinear(s.original_weight[id], s.original_bias[id], id, Touching(next, id));
      if (!AllFinite(w) || !AllFinite(b)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "merging adapter ", adapter->name(), " would put NaN/Inf into ",
            model_->linears()[id].name, "; model left unchanged"));
      }
      pending.push_back({id, w, b});
    }
    if (adapter->embedding() != nullptr) {
      new_embed = ComposeEmbedding(s.original_embed, WithEmbedding(next));
      if (!AllFinite(new_embed)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "merging adapter ", adapter->name(), " would put NaN/Inf into the embedding"));
      }
    }
    return absl::OkStatus();
  });
  LORASERVE_RETURN_IF_ERROR(computed);
  for (Pending& p : pending) {
    LinearModule* lm = model_->MutableLinear(model_->linears()[p.id].name);
    lm->weight = p.w;
    lm->bias = p.b;
  }
  // The head never sees an embedding merge: it keeps the checkpoint tensor (untying a tied head).
  if (new_embed.defined()) model_->mutable_embedding() = new_embed;
  if (adapter->head().defined()) model_->MutableLinear(kHeadModule)->weight = adapter->head();
  s.merged = std::move(next);
  s.Rebuild();
  return true;
}

absl::Status LoraModel::Unmerge(const std::string& name) {
  State& s = *state_;
  auto it = std::find_if(s.merged.begin(), s.merged.end(),
                         [&](const auto& a) { return a->name() == name; });
  if (it == s.merged.end()) {
    return absl::FailedPreconditionError(absl::StrCat("adapter ", name, " is not merged"));
  }
  std::shared_ptr<const LoraAdapter> adapter = *it;
  s.merged.erase(it);
  return CallTorch("unmerging adapter " + name, [&]() {
    c10::InferenceMode guard;
    if (adapter->embedding() != nullptr) {
      model_->mutable_embedding() = ComposeEmbedding(s.original_embed, WithEmbedding(s.merged));
    }
    for (int id : TouchedLinears(*adapter)) {
      auto [w, b] = ComposeLinear(s.original_weight[id], s.original_bias[id], id, Touching(s.merged, id));
      LinearModule* lm = model_->MutableLinear(model_->linears()[id].name);
      lm->weight = w;
      lm->bias = b;
    }
    if (adapter->head().defined()) model_->MutableLinear(kHeadModule)->weight = s.original_head;
    s.Rebuild();
  });
}

void LoraModel::UnmergeAll() {
  State& s = *state_;
  for (size_t i = 0; i < model_->linears().size(); ++i) {
    LinearModule* lm = model_->MutableLinear(model_->linears()[i].name);
    lm->weight = s.original_weight[i];
    lm->bias = s.original_bias[i];
  }
  model_->mutable_embedding() = s.original_embed;
  s.merged.clear();
  s.Rebuild();
}

absl::Status LoraModel::ExportMerged(const std::vector<std::shared_ptr<const LoraAdapter>>& adapters,
                                     const std::string& out_dir, const std::string& source_dir) const {
  if (!IsDirectory(out_dir)) return absl::NotFoundError(absl::StrCat("directory ", out_dir, " not found"));
  const State& s = *state_;
  std::set<std::string> names;
  int heads = 0;
  for (const auto& a : adapters) {
    if (!names.insert(a->name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("adapter ", a->name(), " listed twice"));
    }
    heads += a->head().defined() ? 1 : 0;
    for (const LoraModule& m : a->modules()) {
      const size_t sharing = m.is_embedding() ? WithEmbedding(adapters).size() : Touching(adapters, m.linear_id).size();
      if (m.is_dora() && sharing > 1) {
        return absl::FailedPreconditionError(absl::StrCat("module ", m.name, " is shared by a DoRA adapter and another adapter"));
      }
    }
  }
  if (heads > 1) return absl::FailedPreconditionError("more than one adapter replaces lm_head");
  NamedTensors tensors;
  ModelConfig config = model_->config();
  LORASERVE_RETURN_IF_ERROR(CallTorch("exporting merged model", [&]() -> absl::Status {
    c10::InferenceMode guard;
    at::Tensor embed = ComposeEmbedding(s.original_embed, WithEmbedding(adapters));
    at::Tensor head = s.original_head;
    for (const auto& a : adapters) {
      if (a->head().defined()) head = a->head();
    }
    if (head.is_same(s.original_head)) {  // LoRA on lm_head itself
      auto [w, b] = ComposeLinear(s.original_head, at::Tensor(), s.head_id, Touching(adapters, s.head_id));
      if (b.defined()) {
        return absl::FailedPreconditionError(
            "lora_bias on lm_head cannot be exported: a Hugging Face Llama head has no bias");
      }
      if (!AllFinite(w)) return absl::InvalidArgumentError("merged lm_head contains NaN/Inf");
      head = w;
    }
    // Norms never change; every linear is recomputed from the checkpoint.
    for (auto& [name, t] : model_->NormWeights()) tensors.emplace_back(name, t);
    tensors.emplace_back("model.embed_tokens.weight", embed);
    for (size_t i = 0; i < model_->linears().size(); ++i) {
      const LinearModule& lm = model_->linears()[i];
      if (static_cast<int>(i) == s.head_id) continue;
      auto [w, b] = ComposeLinear(s.original_weight[i], s.original_bias[i], static_cast<int>(i),
                                  Touching(adapters, static_cast<int>(i)));
      if (!AllFinite(w) || !AllFinite(b)) {
        return absl::InvalidArgumentError(absl::StrCat("merged ", lm.name, " contains NaN/Inf"));
      }
      tensors.emplace_back(lm.name + ".weight", w);
      if (b.defined()) tensors.emplace_back(lm.name + ".bias", b);
    }
    // A materialised lora_bias needs the config to declare biases, and Hugging Face's Llama then
    // expects them on every projection of the group: fill the others with zeros.
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < tensors.size(); ++i) index[tensors[i].first] = i;
    auto has_bias = [&](const std::string& module) { return index.count(module + ".bias") > 0; };
    bool attn_bias = false, mlp_bias = false;
    for (const LinearModule& lm : model_->linears()) {
      if (!has_bias(lm.name)) continue;
      (lm.name.find(".self_attn.") != std::string::npos ? attn_bias : mlp_bias) = true;
    }
    if (config.model_type == "qwen2" && attn_bias) {
      for (const LinearModule& lm : model_->linears()) {
        if (lm.name.find(".o_proj") != std::string::npos && has_bias(lm.name)) {
          return absl::FailedPreconditionError("Qwen2 checkpoints cannot carry an o_proj bias");
        }
      }
    }
    for (const LinearModule& lm : model_->linears()) {
      if (lm.name == kHeadModule || has_bias(lm.name)) continue;
      const bool attn = lm.name.find(".self_attn.") != std::string::npos;
      if (config.model_type == "qwen2" && lm.name.find(".o_proj") != std::string::npos) continue;
      if ((attn && attn_bias) || (!attn && mlp_bias)) {
        tensors.emplace_back(lm.name + ".bias", at::zeros({lm.out_features}, lm.weight.options()));
      }
    }
    if (attn_bias) {
      config.attention_bias = true;
      if (config.model_type != "qwen2") config.o_proj_bias = true;
    }
    if (mlp_bias) config.mlp_bias = true;
    // Tied only if the head is still exactly the (unchanged) embedding; otherwise untie.
    const bool tied = head.is_same(embed);
    config.tie_word_embeddings = tied;
    if (!tied) tensors.emplace_back("lm_head.weight", head);
    return absl::OkStatus();
  }));
  LORASERVE_RETURN_IF_ERROR(SaveSafetensors(JoinPath(out_dir, "model.safetensors"), tensors));
  Json cj = config.ToJson();
  cj["torch_dtype"] = model_->options().dtype == at::kBFloat16 ? "bfloat16"
                      : model_->options().dtype == at::kHalf   ? "float16"
                                                               : "float32";
  LORASERVE_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_dir, "config.json"), cj.dump(2) + "\n"));
  if (!source_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                          "special_tokens_map.json"}) {
      const std::string src = JoinPath(source_dir, f);
      if (!FileExists(src)) continue;
      LORASERVE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(src));
      LORASERVE_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_dir, f), bytes));
    }
  }
  return absl::OkStatus();
}

}  // namespace loraserve::core
