// The set of loaded adapters by name, with a memory budget for resident adapter weights.
//
// Adapters are immutable and handed out as std::shared_ptr<const LoraAdapter>: deleting or evicting
// one never breaks a forward already holding it. When resident weights exceed the budget, the
// least-recently-used unpinned adapters are evicted (their weights dropped; on a GPU server they
// would move to host memory, on CPU they go back to their files, written to a spill directory
// first for adapters that have none, e.g. combined ones) and reloaded transparently on next use.
#ifndef LORASERVE_CORE_LORA_ADAPTER_REGISTRY_H_
#define LORASERVE_CORE_LORA_ADAPTER_REGISTRY_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/lora/adapter_types.h"
#include "core/lora/lora_adapter.h"
#include "core/model/model.h"

namespace loraserve::core {

// Thread-safe.
class AdapterRegistry {
 public:
  // `base_weight` returns the checkpoint weight of a linear (see LoraModel::BaseWeightFn).
  AdapterRegistry(const Model& model, std::function<at::Tensor(int)> base_weight,
                  AdapterRegistryOptions options);
  ~AdapterRegistry();

  // Loads a PEFT directory as `name`. AlreadyExists if the name is taken; the loader's errors
  // otherwise (nothing is registered then). Reading and validation run without holding the lock.
  // `register_only`: the adapter is read and validated, then its weights are dropped (an entry of
  // a few hundred bytes); the first Get loads them again.
  absl::StatusOr<AdapterInfo> Load(const std::string& name, const std::string& dir,
                                   bool register_only = false);
  // Registers an adapter built in memory (e.g. by CombineAdapters). AlreadyExists if taken.
  absl::StatusOr<AdapterInfo> Add(std::shared_ptr<const LoraAdapter> adapter);
  // The adapter, reloading it if evicted (blocking: file I/O); marks it most recently used.
  // NotFound if unknown.
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> Get(const std::string& name);
  // The adapter when resident (marked most recently used), nullptr when it must be loaded first
  // (call Get on a thread that may block); NotFound if unknown. Never blocks on I/O.
  absl::StatusOr<std::shared_ptr<const LoraAdapter>> GetIfResident(const std::string& name);
  // Forgets the adapter. NotFound if unknown; FailedPrecondition while pinned (merged).
  absl::Status Delete(const std::string& name);
  // Pinned adapters stay resident (used for merged adapters). NotFound if unknown.
  absl::Status SetPinned(const std::string& name, bool pinned);
  // Pins `name` with exactly `adapter` resident (the object a merge used: the model recognises
  // merged adapters by identity, and the entry may have been evicted or reloaded meanwhile).
  // NotFound if unknown.
  absl::Status PinAs(const std::string& name, std::shared_ptr<const LoraAdapter> adapter);
  absl::StatusOr<AdapterInfo> Info(const std::string& name) const;
  std::vector<AdapterInfo> List() const;
  bool Contains(const std::string& name) const;
  // Forgets every adapter (pins included).
  void Clear();

  int64_t resident_bytes() const;
  int64_t evictions() const;
  // Loads by Get of adapters that were not resident (evicted or registered only), and the time
  // they took.
  int64_t reloads() const;
  double reload_seconds() const;
  int64_t size() const;
  AdapterCounts Counts() const;

 private:
  struct Entry {
    AdapterInfo info;
    std::shared_ptr<const LoraAdapter> adapter;  // null while evicted or registered only
    std::list<std::string>::iterator lru;        // its place in lru_ while resident
  };
  static AdapterInfo Describe(const LoraAdapter& a, std::vector<std::string> warnings);
  absl::StatusOr<AdapterInfo> Insert(std::shared_ptr<const LoraAdapter> adapter,
                                     std::vector<std::string> warnings, bool register_only);
  void Touch(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MakeResidentLocked(Entry& e, std::shared_ptr<const LoraAdapter> adapter) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The reverse: weights dropped (no-op when not resident), out of lru_ and resident_bytes_.
  void DropWeightsLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `delta` to the count of e's state (call with −1 before changing it, +1 after).
  void Count(const Entry& e, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts LRU entries until within budget, never `keep`.
  void EvictLocked(const std::string& keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> SpillDirLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Model& model_;
  const std::function<at::Tensor(int)> base_weight_;
  const AdapterRegistryOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // resident entries; front = most recent
  int64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reloads_ ABSL_GUARDED_BY(mu_) = 0;
  double reload_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  AdapterCounts counts_ ABSL_GUARDED_BY(mu_);  // kept up to date by Count
  std::string spill_dir_ ABSL_GUARDED_BY(mu_);
  bool own_spill_dir_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_LORA_ADAPTER_REGISTRY_H_
