// Tenants: who a caller is (its bearer token), what it may do (its role), which adapters it sees
// (its namespace) and how much it may use (its quotas).
//
// --tenants_file (JSON, README "Tenants") lists the tenants. Without it the server has one
// tenant, "default", an admin with no quotas whose adapter names are used as given: the open
// server, or the --auth_tokens_file server (every token belongs to that tenant).
//
// Adapter names with a tenants file: a caller's "x" is its own adapter, stored in the engine as
// "<tenant>/x"; "shared/x" is a shared adapter, visible to every tenant and changed only by
// admins; an admin may also name any tenant's adapter as "<tenant>/x". Naming another tenant's
// adapter any other way answers exactly as a missing adapter does.
//
// Thread-safe: TenantDirectory is immutable; TenantRegistry and TenantLimiter lock inside.
#ifndef LORASERVE_SERVER_TENANTS_H_
#define LORASERVE_SERVER_TENANTS_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"

namespace loraserve::server {

inline constexpr char kSharedNamespace[] = "shared";
inline constexpr char kDefaultTenant[] = "default";
// retry-after-ms of an adapters / adapter_bytes quota refusal (freeing room takes a delete).
inline constexpr absl::Duration kAdapterQuotaRetryAfter = absl::Seconds(1);

// Ordered: each role may do everything the roles below it may.
enum class Role { kUser = 0, kOperator = 1, kAdmin = 2 };
const char* RoleName(Role role);

// 0 = unlimited.
struct TenantQuotas {
  int64_t adapters = 0;             // adapters the tenant owns (loading ones included)
  int64_t adapter_bytes = 0;        // their weights' bytes
  int64_t concurrent_requests = 0;  // inference requests in the engine at once
  int64_t queued_requests = 0;      // more requests waiting for one of those slots
  int64_t tokens_per_minute = 0;    // prompt + generated tokens, a token bucket of one minute
};

struct TenantSpec {
  std::string id;
  // The adapter namespace (default: the id). Entries may share one, e.g. an operator entry that
  // manages a team's adapters and a user entry for its application.
  std::string ns;
  Role role = Role::kUser;
  double weight = 1.0;
  // Where the tenant's LoadAdapter paths resolve, relative to --adapter_root ("" = the root).
  std::string adapter_dir;
  TenantQuotas quotas;
  std::vector<TokenDigest> token_digests;
};

class TenantDirectory {
 public:
  // The tenants file's text: {"tenants": [{"id", "namespace", "role", "tokens" | "token_sha256",
  // "weight", "adapter_dir", "quotas": {...}}]}. InvalidArgument naming the field on any mistake (unknown
  // keys included: a misspelt quota must not silently mean "unlimited").
  static absl::StatusOr<std::shared_ptr<const TenantDirectory>> FromJson(absl::string_view text,
                                                                         absl::string_view source);
  static absl::StatusOr<std::shared_ptr<const TenantDirectory>> FromFile(const std::string& path);
  // One admin tenant "default" with these tokens (none = the open server); names not namespaced.
  static std::shared_ptr<const TenantDirectory> SingleTenant(std::vector<TokenDigest> digests);

  // Whether adapter names are per tenant (a tenants file) or used as given.
  bool namespaced() const { return namespaced_; }
  bool requires_token() const { return requires_token_; }
  const std::vector<TenantSpec>& tenants() const { return tenants_; }
  // The tenant whose token the `authorization` value ("Bearer <token>") carries, every token
  // compared in constant time; the only tenant when no token is required. Unauthenticated
  // otherwise (as BearerTokenAuth::Check words it).
  absl::StatusOr<const TenantSpec*> Authenticate(std::optional<absl::string_view> authorization) const;
  const TenantSpec* Find(absl::string_view id) const;

 private:
  TenantDirectory() = default;
  bool namespaced_ = false;
  bool requires_token_ = false;
  std::vector<TenantSpec> tenants_;
  // Every token's digest, and the index of its tenant at the same position.
  std::vector<TokenDigest> token_digests_;
  std::vector<size_t> token_tenants_;
};

// One tenant's admission of inference requests: concurrency slots with a bounded wait queue, and
// the tokens-per-minute bucket.
class TenantLimiter {
 public:
  // Returns the resumes of waiting requests that a raised concurrency limit admits now (to run on
  // a pool).
  std::vector<std::function<void()>> SetQuotas(const TenantQuotas& quotas);

  // Admits one request. Returns true when it holds a slot now; false when it waits in the queue
  // (`resume` is then returned by a later Leave(); `*ticket` identifies it for Withdraw). Over a
  // quota: ResourceExhausted, `*retry_after` set.
  absl::StatusOr<bool> Enter(std::function<void()> resume, uint64_t* ticket, absl::Duration* retry_after);
  // Takes a waiting request out of the queue: true when it was still waiting (it will not
  // resume), false when it was admitted meanwhile (its resume has run or is about to).
  bool Withdraw(uint64_t ticket);
  // Frees a slot; returns the resume of the request admitted to it (to run on a pool), if any.
  std::function<void()> Leave();
  // Takes the tokens a finished request processed from the bucket (it may go below zero: the
  // next requests then wait until it refills).
  void Charge(int64_t tokens);

  int64_t running() const;
  int64_t waiting() const;

 private:
  void RefillLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  TenantQuotas quotas_ ABSL_GUARDED_BY(mu_);
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<std::pair<uint64_t, std::function<void()>>> waiting_ ABSL_GUARDED_BY(mu_);
  double bucket_ ABSL_GUARDED_BY(mu_) = 0;  // tokens available
  bool bucket_started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time refilled_ ABSL_GUARDED_BY(mu_);
};

// The caller of one request: its tenant (kept alive by `directory`) and limiter.
struct Caller {
  std::shared_ptr<const TenantDirectory> directory;
  const TenantSpec* tenant = nullptr;
  TenantLimiter* limiter = nullptr;
  std::string adapter_root;  // the tenant's canonical adapter directory ("" = none)

  bool namespaced() const { return directory->namespaced(); }
  Role role() const { return tenant->role; }
};

// What a call does with the adapter it names.
enum class Access {
  kUse,     // inference, reads
  kManage,  // change or delete an existing adapter
  kCreate,  // create one under this name
};

// The engine's name for the adapter `name` (as the caller wrote it in `field`) for `access`:
// InvalidArgument for a malformed name, PermissionDenied when the role may not do that to it,
// NotFound ("adapter <name> not found", the engine's own wording) for another tenant's adapter.
// "" stays "" (the base model) when `allow_empty`.
absl::StatusOr<std::string> ResolveAdapterName(const Caller& caller, absl::string_view name, Access access,
                                               absl::string_view field, bool allow_empty = false);
// The caller's name for the engine's adapter `internal`; nullopt when the caller may not see it.
std::optional<std::string> DisplayAdapterName(const Caller& caller, absl::string_view internal);
// The engine's names of the caller's own adapters start with this: "<namespace>/" ("" when not
// namespaced).
std::string OwnPrefix(const Caller& caller);
// A character of an engine adapter name ("<namespace>/<name>").
bool IsAdapterNameChar(char c);
// `message` with every whole occurrence of each pair's first name replaced by its second.
std::string RenameAdapters(absl::string_view message,
                           const std::vector<std::pair<std::string, std::string>>& names);
// PermissionDenied unless the caller's role is at least `needed`.
absl::Status RequireRole(const Caller& caller, Role needed, absl::string_view what);

// The current tenants and their limiters; Reload swaps the directory while calls go on.
class TenantRegistry {
 public:
  // `adapter_root`: the server's canonical --adapter_root ("" = none).
  TenantRegistry(std::shared_ptr<const TenantDirectory> directory, std::string adapter_root);

  // Replaces the directory with the file's; on any error keeps the current one. Returns the
  // resumes of waiting requests that raised limits admit (to run on a pool).
  absl::StatusOr<std::vector<std::function<void()>>> Reload(const std::string& path);
  std::shared_ptr<const TenantDirectory> directory() const;
  // Authenticates and returns the caller.
  absl::StatusOr<Caller> Authenticate(std::optional<absl::string_view> authorization) const;

 private:
  std::vector<std::function<void()>> InstallLocked(std::shared_ptr<const TenantDirectory> directory)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string adapter_root_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const TenantDirectory> directory_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> roots_ ABSL_GUARDED_BY(mu_);  // tenant id -> adapter root
  // Never removed (a tenant dropped by a reload may still have calls in flight).
  std::map<std::string, std::unique_ptr<TenantLimiter>> limiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_TENANTS_H_
