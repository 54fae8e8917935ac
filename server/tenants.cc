#include "server/tenants.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "server/proto_convert.h"

namespace loraserve::server {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

absl::Status Bad(absl::string_view source, absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tenants file ", source, ": ", where, ": ", what));
}

absl::Status OnlyKeys(const Json& obj, std::initializer_list<const char*> keys, absl::string_view source,
                      absl::string_view where) {
  for (const auto& item : obj.items()) {
    const std::string& key = item.key();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* k) { return key == k; })) {
      return Bad(source, where,
                 absl::StrCat("unknown key \"", key, "\" (known: ", absl::StrJoin(keys, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TenantQuotas> QuotasFromJson(const Json& j, absl::string_view source, absl::string_view where) {
  TenantQuotas q;
  if (!j.is_object()) return Bad(source, where, "\"quotas\" must be an object");
  absl::Status s = OnlyKeys(j, {"adapters", "adapter_bytes", "concurrent_requests", "queued_requests",
                                "tokens_per_minute"},
                            source, where);
  if (!s.ok()) return s;
  const std::pair<const char*, int64_t*> fields[] = {
      {"adapters", &q.adapters},
      {"adapter_bytes", &q.adapter_bytes},
      {"concurrent_requests", &q.concurrent_requests},
      {"queued_requests", &q.queued_requests},
      {"tokens_per_minute", &q.tokens_per_minute},
  };
  for (const auto& [key, out] : fields) {
    if (!j.contains(key)) continue;
    const Json& v = j[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return Bad(source, where, absl::StrCat("quotas.", key, " must be an integer >= 0 (0 = unlimited)"));
    }
    *out = v.get<int64_t>();
  }
  if (q.queued_requests > 0 && q.concurrent_requests == 0) {
    return Bad(source, where, "quotas.queued_requests needs quotas.concurrent_requests (requests queue for its slots)");
  }
  return q;
}

absl::StatusOr<TokenDigest> DigestFromHex(absl::string_view hex) {
  TokenDigest d{};
  if (hex.size() != 64) return absl::InvalidArgumentError("a token_sha256 entry must be 64 hex digits");
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError("a token_sha256 entry must be 64 hex digits");
    }
  }
  const std::string bytes = absl::HexStringToBytes(hex);
  std::copy(bytes.begin(), bytes.end(), d.begin());
  return d;
}

absl::StatusOr<TenantSpec> TenantFromJson(const Json& j, absl::string_view source, absl::string_view where) {
  if (!j.is_object()) return Bad(source, where, "each tenant must be an object");
  absl::Status s = OnlyKeys(j, {"id", "namespace", "role", "tokens", "token_sha256", "weight", "adapter_dir", "quotas"},
                            source, where);
  if (!s.ok()) return s;
  TenantSpec t;
  if (!j.contains("id") || !j["id"].is_string()) return Bad(source, where, "\"id\" (a string) is required");
  t.id = j["id"].get<std::string>();
  const std::string at = absl::StrCat(where, " (", t.id, ")");
  if (t.id.size() > 64 || !ValidateAdapterName(t.id, "id").ok() || t.id == "." || t.id == "..") {
    return Bad(source, at, "\"id\" must be 1 to 64 characters of [A-Za-z0-9._-]");
  }
  t.ns = t.id;
  if (j.contains("namespace")) {
    if (!j["namespace"].is_string()) return Bad(source, at, "\"namespace\" must be a string");
    t.ns = j["namespace"].get<std::string>();
    if (t.ns.size() > 64 || !ValidateAdapterName(t.ns, "namespace").ok() || t.ns == "." || t.ns == "..") {
      return Bad(source, at, "\"namespace\" must be 1 to 64 characters of [A-Za-z0-9._-]");
    }
  }
  if (t.id == kSharedNamespace || t.ns == kSharedNamespace) {
    return Bad(source, at, "\"shared\" is reserved for the adapters admins share with every tenant");
  }
  if (!j.contains("role") || !j["role"].is_string()) {
    return Bad(source, at, "\"role\" is required: admin, operator or user");
  }
  const std::string role = j["role"].get<std::string>();
  if (role == "admin") {
    t.role = Role::kAdmin;
  } else if (role == "operator") {
    t.role = Role::kOperator;
  } else if (role == "user") {
    t.role = Role::kUser;
  } else {
    return Bad(source, at, absl::StrCat("\"role\" must be admin, operator or user, not \"", role, "\""));
  }
  for (const char* key : {"tokens", "token_sha256"}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_array()) return Bad(source, at, absl::StrCat("\"", key, "\" must be a list of strings"));
    for (const Json& v : j[key]) {
      if (!v.is_string()) return Bad(source, at, absl::StrCat("\"", key, "\" must be a list of strings"));
      const std::string text = v.get<std::string>();
      if (std::string(key) == "tokens") {
        if (!ValidToken(text)) {
          return Bad(source, at, "a token must be 1 to 4096 printable ASCII characters without whitespace");
        }
        t.token_digests.push_back(DigestOfToken(text));
      } else {
        absl::StatusOr<TokenDigest> d = DigestFromHex(text);
        if (!d.ok()) return Bad(source, at, d.status().message());
        t.token_digests.push_back(*d);
      }
    }
  }
  if (t.token_digests.empty()) {
    return Bad(source, at, "a tenant needs at least one token (\"tokens\" or \"token_sha256\")");
  }
  if (j.contains("weight")) {
    if (!j["weight"].is_number() || !(j["weight"].get<double>() > 0) || !std::isfinite(j["weight"].get<double>())) {
      return Bad(source, at, "\"weight\" must be a number > 0");
    }
    t.weight = j["weight"].get<double>();
  }
  t.adapter_dir = t.role == Role::kAdmin ? std::string() : t.ns;
  if (j.contains("adapter_dir")) {
    if (!j["adapter_dir"].is_string()) return Bad(source, at, "\"adapter_dir\" must be a string");
    const std::string dir = j["adapter_dir"].get<std::string>();
    const fs::path normal = fs::path(dir).lexically_normal();
    if (!dir.empty() && (dir.front() == '/' || (!normal.empty() && *normal.begin() == ".."))) {
      return Bad(source, at, "\"adapter_dir\" must be relative to --adapter_root and stay below it");
    }
    t.adapter_dir = normal == "." ? std::string() : normal.string();
  }
  if (j.contains("quotas")) {
    absl::StatusOr<TenantQuotas> q = QuotasFromJson(j["quotas"], source, at);
    if (!q.ok()) return q.status();
    t.quotas = *q;
  }
  return t;
}

}  // namespace

bool IsAdapterNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '/';
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kAdmin: return "admin";
    case Role::kOperator: return "operator";
    case Role::kUser: return "user";
  }
  return "user";
}

absl::StatusOr<std::shared_ptr<const TenantDirectory>> TenantDirectory::FromJson(absl::string_view text,
                                                                                 absl::string_view source) {
  Json root = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Bad(source, "top level", "not valid JSON");
  if (!root.is_object()) return Bad(source, "top level", "must be an object {\"tenants\": [...]}");
  absl::Status s = OnlyKeys(root, {"tenants"}, source, "top level");
  if (!s.ok()) return s;
  if (!root.contains("tenants") || !root["tenants"].is_array() || root["tenants"].empty()) {
    return Bad(source, "top level", "\"tenants\" must be a non-empty list");
  }
  std::shared_ptr<TenantDirectory> d(new TenantDirectory());
  d->namespaced_ = true;
  d->requires_token_ = true;
  std::set<std::string> ids;
  std::set<TokenDigest> digests;
  for (size_t i = 0; i < root["tenants"].size(); ++i) {
    absl::StatusOr<TenantSpec> t = TenantFromJson(root["tenants"][i], source, absl::StrCat("tenants[", i, "]"));
    if (!t.ok()) return t.status();
    if (!ids.insert(t->id).second) return Bad(source, absl::StrCat("tenants[", i, "]"), "duplicate id " + t->id);
    for (const TokenDigest& digest : t->token_digests) {
      // A token of two tenants would make the caller ambiguous.
      if (!digests.insert(digest).second) {
        return Bad(source, absl::StrCat("tenants[", i, "] (", t->id, ")"), "a token is listed twice");
      }
      d->token_digests_.push_back(digest);
      d->token_tenants_.push_back(d->tenants_.size());
    }
    d->tenants_.push_back(*std::move(t));
  }
  return std::shared_ptr<const TenantDirectory>(std::move(d));
}

absl::StatusOr<std::shared_ptr<const TenantDirectory>> TenantDirectory::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read the tenants file ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read the tenants file ", path));
  return FromJson(text.str(), path);
}

std::shared_ptr<const TenantDirectory> TenantDirectory::SingleTenant(std::vector<TokenDigest> digests) {
  std::shared_ptr<TenantDirectory> d(new TenantDirectory());
  TenantSpec t;
  t.id = kDefaultTenant;
  t.ns = kDefaultTenant;
  t.role = Role::kAdmin;
  d->token_digests_ = digests;
  d->token_tenants_.assign(digests.size(), 0);
  d->requires_token_ = !digests.empty();
  t.token_digests = std::move(digests);
  d->tenants_.push_back(std::move(t));
  return d;
}

absl::StatusOr<const TenantSpec*> TenantDirectory::Authenticate(
    std::optional<absl::string_view> authorization) const {
  if (!requires_token_) return &tenants_.front();
  absl::StatusOr<absl::string_view> token = BearerTokenOf(authorization);
  if (!token.ok()) return token.status();
  const int match = MatchDigest(DigestOfToken(*token), token_digests_);
  if (match < 0) return absl::UnauthenticatedError("unknown bearer token");
  return &tenants_[token_tenants_[match]];
}

const TenantSpec* TenantDirectory::Find(absl::string_view id) const {
  for (const TenantSpec& t : tenants_) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

std::vector<std::function<void()>> TenantLimiter::SetQuotas(const TenantQuotas& quotas) {
  absl::MutexLock lock(&mu_);
  quotas_ = quotas;
  if (quotas_.tokens_per_minute > 0) {
    bucket_ = std::min(bucket_, static_cast<double>(quotas_.tokens_per_minute));
  }
  std::vector<std::function<void()>> admitted;
  while (!waiting_.empty() && (quotas_.concurrent_requests == 0 || running_ < quotas_.concurrent_requests)) {
    admitted.push_back(std::move(waiting_.front().second));
    waiting_.pop_front();
    ++running_;
  }
  return admitted;
}

void TenantLimiter::RefillLocked(absl::Time now) {
  const double capacity = static_cast<double>(quotas_.tokens_per_minute);
  if (!bucket_started_) {
    bucket_ = capacity;
    bucket_started_ = true;
  } else {
    bucket_ = std::min(capacity, bucket_ + absl::ToDoubleSeconds(now - refilled_) * capacity / 60.0);
  }
  refilled_ = now;
}

absl::StatusOr<bool> TenantLimiter::Enter(std::function<void()> resume, uint64_t* ticket,
                                          absl::Duration* retry_after) {
  absl::MutexLock lock(&mu_);
  if (quotas_.tokens_per_minute > 0) {
    RefillLocked(absl::Now());
    if (bucket_ <= 0) {
      const double per_second = static_cast<double>(quotas_.tokens_per_minute) / 60.0;
      *retry_after = absl::Milliseconds(std::ceil((1.0 - bucket_) / per_second * 1000.0));
      return absl::ResourceExhaustedError(absl::StrCat(
          "the tenant's tokens_per_minute quota (", quotas_.tokens_per_minute, ") is used up"));
    }
  }
  if (quotas_.concurrent_requests == 0 || running_ < quotas_.concurrent_requests) {
    ++running_;
    return true;
  }
  if (static_cast<int64_t>(waiting_.size()) < quotas_.queued_requests) {
    *ticket = next_ticket_++;
    waiting_.emplace_back(*ticket, std::move(resume));
    return false;
  }
  *retry_after = absl::ZeroDuration();
  return absl::ResourceExhaustedError(absl::StrCat("the tenant's concurrent_requests quota (",
                                                   quotas_.concurrent_requests, " running, ", waiting_.size(),
                                                   " queued) is full"));
}

bool TenantLimiter::Withdraw(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->first == ticket) {
      waiting_.erase(it);
      return true;
    }
  }
  return false;
}

std::function<void()> TenantLimiter::Leave() {
  absl::MutexLock lock(&mu_);
  --running_;
  if (!waiting_.empty() && (quotas_.concurrent_requests == 0 || running_ < quotas_.concurrent_requests)) {
    std::function<void()> resume = std::move(waiting_.front().second);
    waiting_.pop_front();
    ++running_;
    return resume;
  }
  return {};
}

void TenantLimiter::Charge(int64_t tokens) {
  absl::MutexLock lock(&mu_);
  if (quotas_.tokens_per_minute == 0 || tokens <= 0) return;
  RefillLocked(absl::Now());
  bucket_ -= static_cast<double>(tokens);
}

int64_t TenantLimiter::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

int64_t TenantLimiter::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(waiting_.size());
}

std::string OwnPrefix(const Caller& caller) {
  return caller.namespaced() ? absl::StrCat(caller.tenant->ns, "/") : std::string();
}

absl::StatusOr<std::string> ResolveAdapterName(const Caller& caller, absl::string_view name, Access access,
                                               absl::string_view field, bool allow_empty) {
  if (!caller.namespaced() || name.empty()) {
    absl::Status s = ValidateAdapterName(name, field, allow_empty);
    if (!s.ok()) return s;
    return std::string(name);
  }
  const size_t slash = name.find('/');
  if (slash == absl::string_view::npos) {
    absl::Status s = ValidateAdapterName(name, field);
    if (!s.ok()) return s;
    return absl::StrCat(caller.tenant->ns, "/", name);
  }
  const absl::string_view ns = name.substr(0, slash);
  const absl::string_view local = name.substr(slash + 1);
  if (!ValidateAdapterName(ns, field).ok() || !ValidateAdapterName(local, field).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": an adapter name is <name> (your own) or shared/<name>, each part 1 to 128 characters of "
               "[A-Za-z0-9._-]"));
  }
  if (ns == kSharedNamespace) {
    if (access != Access::kUse && caller.role() != Role::kAdmin) {
      return absl::PermissionDeniedError(
          absl::StrCat("shared adapters are read-only: only an admin may change ", name));
    }
    return std::string(name);
  }
  if (ns == caller.tenant->ns || caller.role() == Role::kAdmin) return std::string(name);
  if (access == Access::kCreate) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": adapter names are per tenant; name your own adapter without a prefix"));
  }
  // Another tenant's namespace: the engine's answer for a missing adapter, whether it exists or not.
  return absl::NotFoundError(absl::StrCat("adapter ", name, " not found"));
}

std::optional<std::string> DisplayAdapterName(const Caller& caller, absl::string_view internal) {
  if (!caller.namespaced()) return std::string(internal);
  const std::string own = OwnPrefix(caller);
  if (absl::StartsWith(internal, own)) return std::string(internal.substr(own.size()));
  if (absl::StartsWith(internal, absl::StrCat(kSharedNamespace, "/")) || caller.role() == Role::kAdmin) {
    return std::string(internal);
  }
  return std::nullopt;
}

absl::Status RequireRole(const Caller& caller, Role needed, absl::string_view what) {
  if (caller.role() >= needed) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(what, " needs the ", RoleName(needed), " role; tenant ",
                                                  caller.tenant->id, " has the ", RoleName(caller.role()),
                                                  " role"));
}

std::string RenameAdapters(absl::string_view message,
                           const std::vector<std::pair<std::string, std::string>>& names) {
  std::string out(message);
  for (const auto& [from, to] : names) {
    if (from == to || from.empty()) continue;
    std::string next;
    size_t pos = 0;
    while (true) {
      const size_t hit = out.find(from, pos);
      if (hit == std::string::npos) break;
      const size_t end = hit + from.size();
      const bool whole = (hit == 0 || !IsAdapterNameChar(out[hit - 1])) && (end == out.size() || !IsAdapterNameChar(out[end]));
      next.append(out, pos, hit - pos);
      next.append(whole ? to : from);
      pos = end;
    }
    next.append(out, pos, std::string::npos);
    out = std::move(next);
  }
  return out;
}

TenantRegistry::TenantRegistry(std::shared_ptr<const TenantDirectory> directory, std::string adapter_root)
    : adapter_root_(std::move(adapter_root)) {
  absl::MutexLock lock(&mu_);
  InstallLocked(std::move(directory));
}

std::vector<std::function<void()>> TenantRegistry::InstallLocked(std::shared_ptr<const TenantDirectory> directory) {
  std::vector<std::function<void()>> admitted;
  roots_.clear();
  for (const TenantSpec& t : directory->tenants()) {
    std::unique_ptr<TenantLimiter>& limiter = limiters_[t.id];
    if (limiter == nullptr) limiter = std::make_unique<TenantLimiter>();
    for (auto& resume : limiter->SetQuotas(t.quotas)) admitted.push_back(std::move(resume));
    std::string root;
    if (!adapter_root_.empty()) {
      std::error_code ec;
      const fs::path p = fs::weakly_canonical(fs::path(adapter_root_) / t.adapter_dir, ec);
      root = ec ? std::string() : p.string();
      while (root.size() > 1 && root.back() == '/') root.pop_back();
    }
    roots_[t.id] = root;
  }
  directory_ = std::move(directory);
  return admitted;
}

absl::StatusOr<std::vector<std::function<void()>>> TenantRegistry::Reload(const std::string& path) {
  absl::StatusOr<std::shared_ptr<const TenantDirectory>> next = TenantDirectory::FromFile(path);
  if (!next.ok()) return next.status();
  absl::MutexLock lock(&mu_);
  return InstallLocked(*std::move(next));
}

std::shared_ptr<const TenantDirectory> TenantRegistry::directory() const {
  absl::MutexLock lock(&mu_);
  return directory_;
}

absl::StatusOr<Caller> TenantRegistry::Authenticate(std::optional<absl::string_view> authorization) const {
  Caller c;
  {
    absl::MutexLock lock(&mu_);
    c.directory = directory_;
  }
  absl::StatusOr<const TenantSpec*> tenant = c.directory->Authenticate(authorization);
  if (!tenant.ok()) return tenant.status();
  c.tenant = *tenant;
  absl::MutexLock lock(&mu_);
  c.limiter = limiters_.at(c.tenant->id).get();
  auto it = roots_.find(c.tenant->id);
  // A reload between the two locks may have dropped the tenant: it then has no adapter root.
  c.adapter_root = it == roots_.end() ? std::string() : it->second;
  return c;
}

}  // namespace loraserve::server
