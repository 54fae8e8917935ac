// LoRA on top of the frozen base model: per-row adapter application inside one forward (mixed
// batches), merge / unmerge with bit-exact restoration, and merged-checkpoint export.
//
// Merge semantics (beyond PEFT, see shared/spec/lora-semantics.md §4): merging adapter X folds
// ΔW_X into the served weights so X's rows skip the LoRA path, while every other row gets −ΔW_X on
// its LoRA path (DoRA: the per-row magnitude scaling is divided out first), so merging never
// changes anyone else's answer. Weights are always recomputed from the checkpoint's tensors, which
// are kept, so after the last unmerge the model holds the original tensors bit for bit.
#ifndef LORASERVE_CORE_LORA_LORA_MODEL_H_
#define LORASERVE_CORE_LORA_LORA_MODEL_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lora/lora_adapter.h"
#include "core/lora/lora_kernel.h"
#include "core/model/model.h"

namespace loraserve::core {

// Not thread-safe: owned by the engine thread, which serialises Merge/Unmerge with forwards.
// Hooks returned by MakeHooks read the merge state and must not outlive a Merge/Unmerge.
class LoraModel {
 public:
  // `model` must outlive this object; its weights at construction are "the checkpoint".
  // `kernel` computes the LoRA products; null = MakeCpuLoraKernel() on a CPU model, else
  // MakeGatherLoraKernel().
  explicit LoraModel(Model* model, std::unique_ptr<LoraKernel> kernel = nullptr);
  ~LoraModel();

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }

  // Hooks for one forward over `batch`: sequence i uses adapters[i] (nullptr = base model).
  std::unique_ptr<ForwardHooks> MakeHooks(
      absl::Span<const SequenceInput> batch,
      const std::vector<std::shared_ptr<const LoraAdapter>>& adapters) const;
  // Forward with per-sequence adapters (wraps Model::Forward + MakeHooks).
  absl::StatusOr<at::Tensor> Forward(absl::Span<const SequenceInput> batch,
                                     const std::vector<std::shared_ptr<const LoraAdapter>>& adapters,
                                     KvCache* cache, LogitsMode mode) const;
  // Scores one token sequence with `adapter` (nullptr = base).
  absl::StatusOr<at::Tensor> Score(absl::Span<const int32_t> tokens,
                                   const std::shared_ptr<const LoraAdapter>& adapter) const;

  // The checkpoint's weight of linear `id` (never a merged one); BaseWeightFn's function also
  // gives the checkpoint's embedding for id -1.
  at::Tensor BaseWeight(int id) const;
  std::function<at::Tensor(int)> BaseWeightFn() const;

  // Merges `adapter` into the served weights. Returns false (and changes nothing) if it is already
  // merged. InvalidArgument naming the adapter if a merged weight would contain NaN/Inf (model
  // untouched); FailedPrecondition if it conflicts with merged adapters (a DoRA module shared with
  // another merged adapter, or two merged output heads).
  absl::StatusOr<bool> Merge(std::shared_ptr<const LoraAdapter> adapter);
  // Unmerges a merged adapter, in any order. FailedPrecondition if it is not merged.
  absl::Status Unmerge(const std::string& name);
  // Restores every checkpoint tensor and forgets all merges.
  void UnmergeAll();
  bool IsMerged(const std::string& name) const;
  std::vector<std::string> MergedNames() const;

  // PEFT merge_and_unload as a Hugging Face checkpoint directory: config.json + model.safetensors
  // (model dtype) with `adapters` folded into the checkpoint weights (independent of what is
  // merged now). The head is untied and written when the merge requires it
  // (tie_word_embeddings=false then). Files listed in `copy_files` (e.g. tokenizer.json) are copied
  // from `source_dir` when present.
  absl::Status ExportMerged(const std::vector<std::shared_ptr<const LoraAdapter>>& adapters,
                            const std::string& out_dir, const std::string& source_dir = "") const;

  struct State;  // merge state shared with the hooks (defined in lora_model.cc)

 private:
  Model* model_;
  std::unique_ptr<State> state_;
  std::unique_ptr<LoraKernel> kernel_;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_LORA_MODEL_H_
