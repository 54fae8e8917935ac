#include "core/lora/demo_adapters.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/io/file_util.h"
#include "core/lora/lora_adapter.h"
#include "core/lora/lora_model.h"
#include "core/model/model.h"
#include "core/model/model_maker.h"

namespace loraserve::core {
namespace {

// Small enough that adapted stories260K still writes (different) stories, large enough that every
// adapter visibly changes the output.
constexpr double kDemoBStddev = 0.05;

}  // namespace

std::vector<std::string> DemoAdapterNames() { return {"demo-qv", "demo-mlp", "demo-dora", "demo-head"}; }

absl::Status WriteDemoAdapters(const std::string& model_dir, const std::string& out_dir, uint64_t seed) {
  namespace fs = std::filesystem;
  LORASERVE_ASSIGN_OR_RETURN(auto model, Model::Load(model_dir, ModelOptions()));
  LoraModel lora(model.get());
  struct Spec {
    std::string name;
    std::vector<std::string> targets;
    int64_t r;
    double alpha;
    bool rslora, dora, head;
  };
  const std::vector<Spec> specs = {
      {"demo-qv", {"q_proj", "v_proj"}, 8, 16, false, false, false},
      {"demo-mlp", {"gate_proj", "up_proj", "down_proj"}, 16, 16, true, false, false},
      {"demo-dora", {"q_proj", "v_proj"}, 4, 8, false, true, false},
      {"demo-head", {"q_proj"}, 4, 8, false, false, true},
  };
  for (const Spec& spec : specs) {
    LoraConfig cfg;
    cfg.r = spec.r;
    cfg.lora_alpha = spec.alpha;
    cfg.use_rslora = spec.rslora;
    cfg.use_dora = spec.dora;
    cfg.target_list = spec.targets;
    cfg.task_type = "CAUSAL_LM";
    cfg.base_model_name_or_path = model->name();
    if (spec.head) cfg.modules_to_save = {"lm_head"};
    std::map<std::string, at::Tensor> tensors;
    const uint64_t s = seed ^ Mix64(std::hash<std::string>()(spec.name));
    for (const LinearModule& lm : model->linears()) {
      if (!cfg.Targets(lm.name, true, lm.name == kHeadModule)) continue;
      const std::string p = std::string(kPeftPrefix) + lm.name;
      tensors[p + ".lora_A.weight"] =
          RandomTensor({spec.r, lm.in_features}, 1.0 / std::sqrt(static_cast<double>(lm.in_features)), s, p + "A");
      tensors[p + ".lora_B.weight"] = RandomTensor({lm.out_features, spec.r}, kDemoBStddev, s, p + "B");
      if (spec.dora) {
        tensors[p + ".lora_magnitude_vector"] =
            lm.weight.norm(2, {1}) * (1 + RandomTensor({lm.out_features}, 0.2, s, p + "M"));
      }
    }
    if (spec.head) {
      const LinearModule& head = model->linears().back();
      tensors[std::string(kPeftPrefix) + "lm_head.weight"] =
          head.weight.to(at::kFloat) + RandomTensor({head.out_features, head.in_features}, 0.05, s, "head");
    }
    LORASERVE_ASSIGN_OR_RETURN(auto adapter, LoraAdapter::FromTensors(spec.name, cfg, tensors, *model,
                                                                      lora.BaseWeightFn(), AdapterLoadOptions()));
    const std::string dir = JoinPath(out_dir, spec.name);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!fs::is_empty(dir, ec)) return absl::FailedPreconditionError(absl::StrCat(dir, " is not empty"));
    LORASERVE_RETURN_IF_ERROR(SaveAdapter(*adapter, dir));
  }
  return absl::OkStatus();
}

}  // namespace loraserve::core
