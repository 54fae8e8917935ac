// Plain data about adapters shared by the engine, the registry and the gRPC layer (no LibTorch).
#ifndef LORASERVE_CORE_LORA_ADAPTER_TYPES_H_
#define LORASERVE_CORE_LORA_ADAPTER_TYPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace loraserve::core {

struct AdapterLoadOptions {
  int64_t max_rank = 256;
  // Storage dtype of linear modules' lora_A / lora_B: "float32" or "bfloat16" (products still
  // accumulate in float32). Embedding LoRA, biases and DoRA vectors stay float32.
  std::string dtype = "float32";
};

struct AdapterRegistryOptions {
  // Resident adapter bytes allowed before LRU eviction; <= 0 means unbounded.
  int64_t budget_bytes = 0;
  AdapterLoadOptions load;
  // Where adapters without files (combined ones) are written when evicted; "" = a private
  // temporary directory created on first need.
  std::string spill_dir;
};

struct AdapterInfo {
  std::string name;
  std::string source_dir;  // "" for in-memory adapters that were never spilled
  bool resident = false;
  // Registered (AdapterRegistry::Load with register_only) and not resident since: no weights in
  // memory yet; the first Get loads them.
  bool registered_only = false;
  bool pinned = false;     // merged adapters are pinned (never evicted)
  int64_t bytes = 0;       // tensor bytes when resident (also known while not resident)
  int64_t max_rank = 0;
  std::vector<int64_t> ranks;             // per module, in module order
  std::vector<std::string> target_modules;
  bool dora = false;
  bool has_head = false;
  std::string base_model_name_or_path;
  std::vector<std::string> warnings;      // e.g. base model mismatch
  int64_t uses = 0;                       // Get() calls
};

// How many adapters are in each state (AdapterRegistry::Counts).
struct AdapterCounts {
  int64_t resident = 0;    // weights in memory, not merged
  int64_t evicted = 0;     // dropped under the budget
  int64_t not_loaded = 0;  // registered only, never needed since
  int64_t merged = 0;      // pinned (always resident)
};

enum class CombinationType {
  kLinear,
  kCat,
  kSvd,
  kTies,
  kTiesSvd,
  kDareLinear,
  kDareTies,
  kDareLinearSvd,
  kDareTiesSvd,
  kMagnitudePrune,
  kMagnitudePruneSvd,
};

// "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
// "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"; InvalidArgument otherwise.
absl::StatusOr<CombinationType> ParseCombinationType(absl::string_view name);
const char* CombinationTypeName(CombinationType type);

struct CombineOptions {
  CombinationType type = CombinationType::kSvd;
  std::vector<double> weights;  // one per source; negative allowed
  int64_t svd_rank = 0;         // svd family: 0 = the largest source rank
  double svd_clamp = 0;         // svd family: 0 = no clamping, else a quantile in (0, 1)
  double density = 1.0;         // ties / dare / magnitude_prune: fraction kept, (0, 1]
  std::string majority_sign_method = "total";  // or "frequency"
  uint64_t seed = 0;            // DARE masks: same seed → same adapter
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_ADAPTER_TYPES_H_
