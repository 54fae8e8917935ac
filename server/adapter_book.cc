#include "server/adapter_book.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace loraserve::server {

absl::Status AdapterBook::BeginLoad(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (!loading_.insert(name).second) {
    return absl::AlreadyExistsError(absl::StrCat("adapter ", name, " is already being loaded"));
  }
  return absl::OkStatus();
}

void AdapterBook::EndLoad(const std::string& name, std::optional<AdapterProvenance> provenance) {
  absl::MutexLock lock(&mu_);
  loading_.erase(name);
  if (provenance.has_value()) provenance_[name] = std::move(*provenance);
}

bool AdapterBook::IsLoading(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  return loading_.count(name) > 0;
}

std::vector<std::string> AdapterBook::Loading() const {
  absl::MutexLock lock(&mu_);
  return std::vector<std::string>(loading_.begin(), loading_.end());
}

int AdapterBook::loading_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(loading_.size());
}

void AdapterBook::Record(const std::string& name, AdapterProvenance provenance) {
  absl::MutexLock lock(&mu_);
  provenance_[name] = std::move(provenance);
}

std::optional<AdapterProvenance> AdapterBook::Find(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = provenance_.find(name);
  if (it == provenance_.end()) return std::nullopt;
  return it->second;
}

std::optional<AdapterProvenance> AdapterBook::Forget(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = provenance_.find(name);
  if (it == provenance_.end()) return std::nullopt;
  AdapterProvenance p = std::move(it->second);
  provenance_.erase(it);
  return p;
}

std::vector<AdapterProvenance> AdapterBook::ForgetAll() {
  absl::MutexLock lock(&mu_);
  std::vector<AdapterProvenance> all;
  for (auto& [name, p] : provenance_) all.push_back(std::move(p));
  provenance_.clear();
  return all;
}

}  // namespace loraserve::server
