#include "core/lora/adapter_registry.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/base/status_macros.h"
#include "core/io/file_util.h"

namespace loraserve::core {

AdapterRegistry::AdapterRegistry(const Model& model, std::function<at::Tensor(int)> base_weight,
                                 AdapterRegistryOptions options)
    : model_(model), base_weight_(std::move(base_weight)), options_(std::move(options)) {
  spill_dir_ = options_.spill_dir;
}

AdapterRegistry::~AdapterRegistry() {
  absl::MutexLock lock(&mu_);
  if (own_spill_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(spill_dir_, ec);
  }
}

AdapterInfo AdapterRegistry::Describe(const LoraAdapter& a, std::vector<std::string> warnings) {
  AdapterInfo info;
  info.name = a.name();
  info.source_dir = a.source_dir();
  info.resident = true;
  info.bytes = a.bytes();
  info.max_rank = a.max_rank();
  for (const LoraModule& m : a.modules()) {
    info.ranks.push_back(m.rank);
    info.target_modules.push_back(m.name);
  }
  info.dora = a.has_dora();
  info.has_head = a.head().defined();
  info.base_model_name_or_path = a.config().base_model_name_or_path;
  info.warnings = std::move(warnings);
  return info;
}

absl::StatusOr<AdapterInfo> AdapterRegistry::Load(const std::string& name, const std::string& dir,
                                                  bool register_only) {
  LORASERVE_RETURN_IF_ERROR(ValidateAdapterName(name));
  if (Contains(name)) return absl::AlreadyExistsError(absl::StrCat("adapter ", name, " already loaded"));
  std::vector<std::string> warnings;
  LORASERVE_ASSIGN_OR_RETURN(auto adapter,
                             LoraAdapter::Load(name, dir, model_, base_weight_, options_.load, &warnings));
  return Insert(std::move(adapter), std::move(warnings), register_only);
}

absl::StatusOr<AdapterInfo> AdapterRegistry::Add(std::shared_ptr<const LoraAdapter> adapter) {
  if (adapter == nullptr) return absl::InvalidArgumentError("no adapter");
  return Insert(std::move(adapter), {}, /*register_only=*/false);
}

absl::StatusOr<AdapterInfo> AdapterRegistry::Insert(std::shared_ptr<const LoraAdapter> adapter,
                                                    std::vector<std::string> warnings, bool register_only) {
  absl::MutexLock lock(&mu_);
  const std::string name = adapter->name();
  if (entries_.count(name)) return absl::AlreadyExistsError(absl::StrCat("adapter ", name, " already loaded"));
  Entry e;
  e.info = Describe(*adapter, std::move(warnings));
  const bool keep_weights = !register_only || e.info.source_dir.empty();
  if (!keep_weights) {
    e.info.resident = false;
    e.info.registered_only = true;
  }
  Entry& entry = entries_.emplace(name, std::move(e)).first->second;
  if (keep_weights) MakeResidentLocked(entry, std::move(adapter));
  Count(entry, +1);
  EvictLocked(name);
  return entry.info;
}

void AdapterRegistry::Touch(Entry& e) {
  if (e.adapter != nullptr) lru_.splice(lru_.begin(), lru_, e.lru);
}

void AdapterRegistry::MakeResidentLocked(Entry& e, std::shared_ptr<const LoraAdapter> adapter) {
  e.info.resident = true;
  e.info.registered_only = false;
  e.info.bytes = adapter->bytes();
  e.adapter = std::move(adapter);
  resident_bytes_ += e.info.bytes;
  lru_.push_front(e.info.name);
  e.lru = lru_.begin();
}

void AdapterRegistry::DropWeightsLocked(Entry& e) {
  if (e.adapter == nullptr) return;
  resident_bytes_ -= e.info.bytes;
  lru_.erase(e.lru);
  e.adapter.reset();
  e.info.resident = false;
}

absl::StatusOr<std::string> AdapterRegistry::SpillDirLocked() {
  if (!spill_dir_.empty()) return spill_dir_;
  std::string templ = "/tmp/loraserve-spill-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return absl::InternalError("cannot create a spill directory");
  spill_dir_ = templ;
  own_spill_dir_ = true;
  return spill_dir_;
}

void AdapterRegistry::EvictLocked(const std::string& keep) {
  if (options_.budget_bytes <= 0) return;
  // lru_ holds the resident entries only, least recent last.
  auto it = lru_.end();
  while (it != lru_.begin() && resident_bytes_ > options_.budget_bytes) {
    --it;
    if (*it == keep) continue;
    Entry& e = entries_.at(*it);
    if (e.info.pinned) continue;
    if (e.info.source_dir.empty()) {
      // No files to reload from: write the adapter out first (PEFT format).
      auto dir = SpillDirLocked();
      if (!dir.ok()) continue;
      // A namespaced name "<tenant>/<name>" becomes one directory "<tenant>@<name>".
      const std::string path = JoinPath(*dir, absl::StrReplaceAll(e.info.name, {{"/", "@"}}));
      ::mkdir(path.c_str(), 0755);
      if (!SaveAdapter(*e.adapter, path).ok()) continue;
      e.info.source_dir = path;
    }
    const auto next = std::next(it);  // DropWeightsLocked erases `it` from lru_
    Count(e, -1);
    DropWeightsLocked(e);  // forwards holding the adapter keep it alive
    Count(e, +1);
    it = next;
    ++evictions_;
  }
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> AdapterRegistry::Get(const std::string& name) {
  std::string dir;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
    ++it->second.info.uses;
    Touch(it->second);
    if (it->second.adapter != nullptr) return it->second.adapter;
    dir = it->second.info.source_dir;
  }
  // Reload outside the lock; another thread may do the same, the first to finish wins.
  const absl::Time start = absl::Now();
  auto loaded = LoraAdapter::Load(name, dir, model_, base_weight_, options_.load);
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " was deleted"));
  if (it->second.adapter != nullptr) return it->second.adapter;
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("reloading evicted adapter ", name, ": ", loaded.status().message()));
  }
  std::shared_ptr<const LoraAdapter> adapter = *std::move(loaded);
  Count(it->second, -1);
  MakeResidentLocked(it->second, adapter);
  Count(it->second, +1);
  ++reloads_;
  reload_seconds_ += took;
  EvictLocked(name);
  return adapter;
}

absl::Status AdapterRegistry::Delete(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
  if (it->second.info.pinned) {
    return absl::FailedPreconditionError(absl::StrCat("adapter ", name, " is merged; unmerge it before deleting"));
  }
  Count(it->second, -1);
  DropWeightsLocked(it->second);
  entries_.erase(it);
  return absl::OkStatus();
}

absl::Status AdapterRegistry::SetPinned(const std::string& name, bool pinned) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
  Count(it->second, -1);
  it->second.info.pinned = pinned;
  Count(it->second, +1);
  if (!pinned) EvictLocked("");
  return absl::OkStatus();
}

absl::Status AdapterRegistry::PinAs(const std::string& name, std::shared_ptr<const LoraAdapter> adapter) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
  Entry& e = it->second;
  Count(e, -1);
  if (e.adapter != adapter) {
    DropWeightsLocked(e);
    MakeResidentLocked(e, std::move(adapter));
  }
  e.info.pinned = true;
  Count(e, +1);
  EvictLocked(name);
  return absl::OkStatus();
}

absl::StatusOr<AdapterInfo> AdapterRegistry::Info(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
  return it->second.info;
}

std::vector<AdapterInfo> AdapterRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<AdapterInfo> out;
  for (const auto& [name, e] : entries_) out.push_back(e.info);
  return out;
}

bool AdapterRegistry::Contains(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  return entries_.count(name) > 0;
}

void AdapterRegistry::Clear() {
  absl::MutexLock lock(&mu_);
  entries_.clear();
  counts_ = AdapterCounts();
  lru_.clear();
  resident_bytes_ = 0;
}

int64_t AdapterRegistry::resident_bytes() const {
  absl::MutexLock lock(&mu_);
  return resident_bytes_;
}

int64_t AdapterRegistry::evictions() const {
  absl::MutexLock lock(&mu_);
  return evictions_;
}

int64_t AdapterRegistry::reloads() const {
  absl::MutexLock lock(&mu_);
  return reloads_;
}

double AdapterRegistry::reload_seconds() const {
  absl::MutexLock lock(&mu_);
  return reload_seconds_;
}

int64_t AdapterRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

AdapterCounts AdapterRegistry::Counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

void AdapterRegistry::Count(const Entry& e, int delta) {
  int64_t& n = e.info.pinned            ? counts_.merged
               : e.adapter != nullptr   ? counts_.resident
               : e.info.registered_only ? counts_.not_loaded
                                        : counts_.evicted;
  n += delta;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> AdapterRegistry::GetIfResident(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
  if (it->second.adapter == nullptr) return std::shared_ptr<const LoraAdapter>();
  ++it->second.info.uses;
  Touch(it->second);
  return it->second.adapter;
}

}  // namespace loraserve::core
