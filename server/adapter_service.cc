#include "server/adapter_service.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/base/status_macros.h"
#include "core/engine/engine.h"
#include "core/io/file_util.h"
#include "server/durable_state.h"
#include "server/grpc_handoff.h"
#include "server/proto_convert.h"
#include "server/unary_call.h"
#include "transfer/file_transfer.h"

namespace loraserve::server {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxExportAdapters = 16;

// The adapter as the caller sees it (its own names, paths relative to its adapter directory).
pb::Adapter Describe(const ServiceEnv& env, const TenantCall& tenant, const core::Engine& engine,
                     const core::AdapterInfo& info) {
  pb::Adapter a = AdapterToProto(info, env.book.Find(info.name), tenant.caller().adapter_root, engine.model_name());
  a.set_name(tenant.Display(info.name));
  return a;
}

// RESOURCE_EXHAUSTED when the caller's tenant may not own one more adapter of `incoming_bytes`
// bytes (`already_counted`: the new one is among the loading ones already). Shared adapters and
// the single-tenant server have no adapter quotas.
absl::Status CheckAdapterQuota(const ServiceEnv& env, const core::Engine& engine, const Caller& caller,
                               const std::string& name, int64_t incoming_bytes, bool already_counted) {
  const TenantQuotas& q = caller.tenant->quotas;
  const std::string prefix = OwnPrefix(caller);
  if ((q.adapters == 0 && q.adapter_bytes == 0) || prefix.empty() || !absl::StartsWith(name, prefix)) {
    return absl::OkStatus();
  }
  int64_t count = already_counted ? 0 : 1;
  int64_t bytes = incoming_bytes;
  std::set<std::string> seen;
  for (const core::AdapterInfo& info : engine.ListAdapters()) {
    if (!absl::StartsWith(info.name, prefix)) continue;
    ++count;
    bytes += info.bytes;
    seen.insert(info.name);
  }
  for (const std::string& loading : env.book.Loading()) {
    if (absl::StartsWith(loading, prefix) && seen.count(loading) == 0) ++count;
  }
  if (q.adapters > 0 && count > q.adapters) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", caller.tenant->id, "'s adapters quota (",
                                                     q.adapters, ") is full; delete one first"));
  }
  if (q.adapter_bytes > 0 && bytes > q.adapter_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", caller.tenant->id, "'s adapter_bytes quota (",
                                                     q.adapter_bytes, ") would be exceeded (", bytes,
                                                     " bytes); delete an adapter first"));
  }
  return absl::OkStatus();
}

// After a load: deletes `name` again when it took its tenant over the byte quota.
absl::Status EnforceBytesQuota(ServiceEnv& env, core::Engine& engine, const Caller& caller,
                               const std::string& name) {
  absl::Status s = CheckAdapterQuota(env, engine, caller, name, 0, /*already_counted=*/true);
  if (!s.ok()) (void)DeleteAdapterNamed(env, engine, name);
  return s;
}

// After a load: records `name` under --state_dir before the call is acknowledged; a record that
// cannot be written unloads it again (the caller's error says why), so nothing acknowledged is
// missing after a restart.
absl::Status PersistOrUnload(ServiceEnv& env, core::Engine& engine, const std::string& name) {
  absl::Status s = PersistAdapter(env, engine, name);
  if (s.ok()) return s;
  (void)DeleteAdapterNamed(env, engine, name);
  return absl::InternalError(absl::StrCat("adapter ", name, " was not loaded: ", s.message()));
}

// Whether `name` is already loaded with the content `checksum` (an error when the given files have
// none, e.g. one is missing): the existing adapter's description when it is (a retried call);
// nullopt when no adapter has the name; AlreadyExists when the name holds other content.
absl::StatusOr<std::optional<pb::Adapter>> AlreadyLoaded(const ServiceEnv& env, const TenantCall& tenant,
                                                         const core::Engine& engine,
                                                         const std::string& name,
                                                         const absl::StatusOr<std::string>& checksum) {
  absl::StatusOr<core::AdapterInfo> info = engine.GetAdapter(name);
  if (!info.ok()) return std::optional<pb::Adapter>();
  const std::optional<AdapterProvenance> p = env.book.Find(name);
  const std::string existing = p.has_value() ? p->checksum : std::string();
  if (existing.empty()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "adapter ", name, " already exists and has no checksum (a combined adapter)"));
  }
  if (!checksum.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("adapter ", name,
                                                 " already exists; the given files have no checksum (",
                                                 checksum.status().message(), ")"));
  }
  if (*checksum != existing) {
    return absl::AlreadyExistsError(absl::StrCat("adapter ", name,
                                                 " already exists with a different checksum (loaded ",
                                                 existing, ", given ", *checksum, ")"));
  }
  return std::optional<pb::Adapter>(Describe(env, tenant, engine, *info));
}

// The CombineAdapters request as JSON with the sources' engine names: the record of how a combined
// adapter was made (its saved weights are what a restart loads).
std::string CombineRecipe(const pb::CombineAdaptersRequest& request, const std::vector<std::string>& sources) {
  pb::CombineAdaptersRequest copy = request;
  copy.clear_name();
  for (int i = 0; i < copy.sources_size() && i < static_cast<int>(sources.size()); ++i) {
    copy.mutable_sources(i)->set_name(sources[static_cast<size_t>(i)]);
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(copy, &json, options);
  return json;
}

// Removes the upload directories of adapters that no longer exist (on the pool: file I/O).
void RemoveUploads(ServiceEnv* env, const std::vector<AdapterProvenance>& gone) {
  std::vector<std::string> dirs;
  for (const auto& p : gone) {
    if (!p.upload_dir.empty()) dirs.push_back(p.upload_dir);
  }
  if (dirs.empty()) return;
  env->pool->Post([dirs = std::move(dirs)] {
    for (const auto& d : dirs) transfer::RemoveTree(d);
  });
}

// UploadAdapter: the first message names the adapter; chunks are written on the pool, one message
// at a time (the next read starts once the previous chunk is on disk); at the end of the stream the
// directory is verified and loaded.
class UploadReactor final : public grpc::ServerReadReactor<pb::UploadAdapterRequest> {
 public:
  UploadReactor(ServiceEnv* env, grpc::CallbackServerContext* context,
                pb::UploadAdapterResponse* response)
      : env_(env), call_(env, context, "UploadAdapter"), response_(response) {
    auto engine = call_.Admit();
    absl::Status s = engine.status();
    if (s.ok()) s = RequireRole(call_.caller(), Role::kOperator, "UploadAdapter");
    if (!s.ok()) {
      Fail(s);
      return;
    }
    engine_ = *std::move(engine);
    GrpcHandoff(this);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    GrpcReaction(this);
    if (!ok) {
      // End of the client's stream (or the call was cancelled).
      if (dir_.empty()) {
        Fail(absl::InvalidArgumentError("the upload ended before its first message"));
        return;
      }
      env_->pool->Post([this] { Complete(); });
      return;
    }
    env_->pool->Post([this] {
      absl::Status s = Consume();
      if (!s.ok()) {
        Fail(s);
        return;
      }
      GrpcHandoff(this);
      StartRead(&request_);
    });
  }

  void OnDone() override {
    GrpcReaction(this);
    delete this;
  }

 private:
  // Pool thread (or the constructor before the first read).
  absl::Status Consume() {
    if (dir_.empty()) {
      call_.set_adapter(request_.name());
      absl::StatusOr<std::string> name = call_.Resolve(request_.name(), Access::kCreate, "name");
      if (!name.ok()) return name.status();
      name_ = *std::move(name);
      absl::Status s;
      total_ = request_.total_bytes();
      if (total_ <= 0) return absl::InvalidArgumentError("total_bytes must be > 0 in the first message");
      if (total_ > env_->config.max_upload_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat("upload of ", total_,
                                                         " bytes exceeds the server's limit of ",
                                                         env_->config.max_upload_bytes, " bytes"));
      }
      // A name already taken is compared by checksum once the files are in (the same content is a
      // retried call); a free one is reserved now, so that it lists as LOADING.
      if (!engine_->GetAdapter(name_).ok()) {
        s = env_->book.BeginLoad(name_);
        if (!s.ok()) return s;
        reserved_ = true;
        s = CheckAdapterQuota(*env_, *engine_, call_.caller(), name_, total_, /*already_counted=*/true);
        if (!s.ok()) {
          call_.set_retry_after(kAdapterQuotaRetryAfter);
          return s;
        }
      }
      auto dir = transfer::MakeUniqueDir(env_->config.upload_dir, "upload-");
      if (!dir.ok()) return dir.status();
      dir_ = *dir;
      writer_ = std::make_unique<transfer::DirectoryWriter>(dir_, total_);
      if (!request_.has_chunk()) return absl::OkStatus();
    } else if (!request_.has_chunk()) {
      return absl::InvalidArgumentError("every message after the first must carry a chunk");
    }
    return writer_->Add(request_.chunk());
  }

  // Pool thread: the stream ended.
  void Complete() {
    absl::Status s = writer_->Finish(total_);
    if (!s.ok()) return Fail(s);
    // The files' SHA-256s were verified as they arrived.
    const absl::StatusOr<std::string> checksum = transfer::AdapterChecksum(writer_->sha256s());
    if (!reserved_) {
      absl::StatusOr<std::optional<pb::Adapter>> same =
          AlreadyLoaded(*env_, call_.tenant(), *engine_, name_, checksum);
      if (!same.ok()) return Fail(same.status());
      if (same->has_value()) {
        // Nothing to load; the copy goes.
        writer_.reset();
        transfer::RemoveTree(dir_);
        response_->set_already_loaded(true);
        *response_->mutable_adapter() = **std::move(same);
        FinishRpc(this, call_, absl::OkStatus());
        return;
      }
      // The adapter was deleted while the files arrived: load them after all.
      s = env_->book.BeginLoad(name_);
      if (!s.ok()) return Fail(s);
      reserved_ = true;
    }
    // Under --state_dir the files are the adapter's durable copy: on disk before the record.
    if (env_->state != nullptr) {
      s = core::SyncTree(dir_);
      if (!s.ok()) return Fail(absl::InternalError(absl::StrCat("cannot make the upload durable: ", s.message())));
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<core::AdapterInfo> info = engine_->LoadAdapter(name_, dir_);
    env_->metrics->RecordAdapterLoad(absl::Now() - start);
    if (!info.ok()) return Fail(info.status());
    AdapterProvenance p;
    p.origin = AdapterOrigin::kUpload;
    p.upload_dir = dir_;
    p.checksum = checksum.ok() ? *checksum : std::string();
    env_->book.EndLoad(name_, std::move(p));
    reserved_ = false;
    s = EnforceBytesQuota(*env_, *engine_, call_.caller(), name_);
    if (!s.ok()) {
      call_.set_retry_after(kAdapterQuotaRetryAfter);
      dir_.clear();  // removed with the adapter
      return Fail(s);
    }
    s = PersistOrUnload(*env_, *engine_, name_);
    if (!s.ok()) {
      dir_.clear();
      return Fail(s);
    }
    *response_->mutable_adapter() = Describe(*env_, call_.tenant(), *engine_, *info);
    call_.LogEvent("adapter_loaded",
                   absl::StrFormat("name=%s source=upload checksum=%s bytes=%d files_bytes=%d "
                                   "load_ms=%.1f",
                                   name_, response_->adapter().checksum(), info->bytes,
                                   writer_->total_bytes(),
                                   absl::ToDoubleMilliseconds(absl::Now() - start)));
    FinishRpc(this, call_, absl::OkStatus());
  }

  void Fail(const absl::Status& status) {
    if (reserved_) env_->book.EndLoad(name_, std::nullopt);
    writer_.reset();
    transfer::RemoveTree(dir_);
    FinishRpc(this, call_, status);
  }

  ServiceEnv* const env_;
  RpcCall call_;
  pb::UploadAdapterResponse* const response_;
  std::shared_ptr<core::Engine> engine_;
  pb::UploadAdapterRequest request_;
  std::string name_;
  int64_t total_ = 0;
  bool reserved_ = false;
  std::string dir_;
  std::unique_ptr<transfer::DirectoryWriter> writer_;
};

// SaveAdapter / ExportMergedModel: the engine writes into a fresh scratch directory, then its
// files are streamed back chunk by chunk (read on the pool, one write in flight).
template <typename Response>
class FileStreamReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  using Producer = std::function<void(const std::string& dir, std::function<void(absl::Status)> done)>;

  FileStreamReactor(ServiceEnv* env, grpc::CallbackServerContext* context, const char* rpc)
      : env_(env), call_(env, context, rpc) {}

  RpcCall& call() { return call_; }

  // Runs `produce` into a new scratch directory; its `done` (any thread) starts the streaming.
  void Start(const Producer& produce) {
    auto dir = transfer::MakeUniqueDir(env_->config.scratch_dir, "out-");
    if (!dir.ok()) return FinishWith(dir.status());
    dir_ = *dir;
    produce(dir_, [this](absl::Status s) {
      if (!s.ok()) return FinishWith(s);
      env_->pool->Post([this] {
        auto reader = transfer::DirectoryReader::Open(dir_, env_->config.file_chunk_bytes);
        if (!reader.ok()) return FinishWith(reader.status());
        reader_ = *std::move(reader);
        WriteNext();
      });
    });
  }

  void FinishWith(const absl::Status& status) { FinishRpc(this, call_, status); }

  void OnWriteDone(bool ok) override {
    GrpcReaction(this);
    if (!ok) return FinishWith(absl::CancelledError("the caller stopped reading"));
    env_->pool->Post([this] { WriteNext(); });
  }

  void OnDone() override {
    GrpcReaction(this);
    if (!dir_.empty()) {
      env_->pool->Post([dir = dir_] { transfer::RemoveTree(dir); });
    }
    delete this;
  }

 private:
  // Pool thread.
  void WriteNext() {
    absl::StatusOr<bool> more = reader_->Next(response_.mutable_chunk());
    if (!more.ok()) return FinishWith(more.status());
    if (!*more) {
      call_.LogEvent("files_sent", absl::StrCat("bytes=", bytes_));
      return FinishWith(absl::OkStatus());
    }
    // The first message announces the size of everything (for the caller's progress).
    response_.set_total_bytes(first_sent_ ? 0 : reader_->total_bytes());
    first_sent_ = true;
    bytes_ += static_cast<int64_t>(response_.chunk().data().size());
    GrpcHandoff(this);
    this->StartWrite(&response_);
  }

  ServiceEnv* const env_;
  RpcCall call_;
  std::string dir_;
  std::unique_ptr<transfer::DirectoryReader> reader_;
  Response response_;
  int64_t bytes_ = 0;
  bool first_sent_ = false;
};

// The engine and the engine's name of the adapter a management call names.
struct Target {
  std::shared_ptr<core::Engine> engine;
  std::string name;
};

// Records `name` as the call's adapter; then the engine and the adapter if the caller is admitted,
// its role is at least `role`, and `name` resolves for `access` (UNAUTHENTICATED / UNAVAILABLE /
// PERMISSION_DENIED / INVALID_ARGUMENT / NOT_FOUND otherwise).
absl::StatusOr<Target> AdmitFor(RpcCall& call, const std::string& name, Role role, Access access) {
  call.set_adapter(name);
  Target t;
  LORASERVE_ASSIGN_OR_RETURN(t.engine, call.Admit());
  LORASERVE_RETURN_IF_ERROR(RequireRole(call.caller(), role, call.rpc()));
  LORASERVE_ASSIGN_OR_RETURN(t.name, call.Resolve(name, access, "name"));
  return t;
}

}  // namespace

absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root, const std::string& relative) {
  if (root.empty()) {
    return absl::FailedPreconditionError(
        "this server has no --adapter_root; use UploadAdapter to send adapter files");
  }
  if (relative.empty()) return absl::InvalidArgumentError("path is empty");
  if (relative.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("path \"", relative, "\" must be relative to the server's adapter root"));
  }
  const fs::path normal = fs::path(relative).lexically_normal();
  if (!normal.empty() && *normal.begin() == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("path \"", relative, "\" escapes the server's adapter root"));
  }
  std::error_code ec;
  const fs::path resolved = fs::canonical(fs::path(root) / normal, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("adapter directory \"", relative, "\" not found"));
  if (!RelativeTo(resolved.string(), root).has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("path \"", relative, "\" escapes the server's adapter root"));
  }
  if (!fs::is_directory(resolved, ec)) {
    return absl::NotFoundError(absl::StrCat("\"", relative, "\" is not a directory"));
  }
  return resolved.string();
}

absl::StatusOr<RootLoad> BeginRootLoad(ServiceEnv& env, const core::Engine& engine, const TenantCall& tenant,
                                       const std::string& name, const std::string& path) {
  if (env.config.adapter_root.empty()) {
    return absl::FailedPreconditionError(
        "this server has no --adapter_root; use UploadAdapter to send adapter files");
  }
  LORASERVE_ASSIGN_OR_RETURN(std::string dir, ResolveUnderRoot(tenant.caller().adapter_root, path));
  RootLoad load{name, std::move(dir), false};
  // A name already taken is compared by checksum later (file I/O); a free one is reserved now, so
  // that it lists as LOADING.
  if (!engine.GetAdapter(name).ok()) {
    LORASERVE_RETURN_IF_ERROR(env.book.BeginLoad(name));
    load.reserved = true;
    absl::Status quota = CheckAdapterQuota(env, engine, tenant.caller(), name, 0, /*already_counted=*/true);
    if (!quota.ok()) {
      env.book.EndLoad(name, std::nullopt);
      return quota;
    }
  }
  return load;
}

absl::StatusOr<RootLoadResult> FinishRootLoad(ServiceEnv& env, core::Engine& engine, const TenantCall& tenant,
                                              const RootLoad& load) {
  const absl::StatusOr<std::string> checksum = transfer::AdapterChecksumOfDir(load.dir);
  RootLoadResult out;
  if (!load.reserved) {
    LORASERVE_ASSIGN_OR_RETURN(std::optional<pb::Adapter> same,
                               AlreadyLoaded(env, tenant, engine, load.name, checksum));
    if (same.has_value()) {
      out.adapter = *std::move(same);
      out.already_loaded = true;
      return out;
    }
    // Deleted in the meantime: load it after all.
    LORASERVE_RETURN_IF_ERROR(env.book.BeginLoad(load.name));
  }
  // A checksum error (a missing file) is left to the loader, whose message says more.
  const absl::Time start = absl::Now();
  absl::StatusOr<core::AdapterInfo> info = engine.LoadAdapter(load.name, load.dir, load.register_only);
  out.took = absl::Now() - start;
  env.metrics->RecordAdapterLoad(out.took);
  if (!info.ok()) {
    env.book.EndLoad(load.name, std::nullopt);
    return info.status();
  }
  AdapterProvenance p;
  p.origin = AdapterOrigin::kAdapterRoot;
  p.relative_path = RelativeTo(load.dir, tenant.caller().adapter_root).value_or("");
  p.root_path = RelativeTo(load.dir, env.config.adapter_root).value_or("");
  p.checksum = checksum.ok() ? *checksum : std::string();
  out.relative_path = p.relative_path;
  env.book.EndLoad(load.name, std::move(p));
  LORASERVE_RETURN_IF_ERROR(EnforceBytesQuota(env, engine, tenant.caller(), load.name));
  LORASERVE_RETURN_IF_ERROR(PersistOrUnload(env, engine, load.name));
  out.adapter = Describe(env, tenant, engine, *info);
  out.event = absl::StrFormat("name=%s source=adapter_root path=%s checksum=%s bytes=%d load_ms=%.1f", load.name,
                              LogValue(out.relative_path), out.adapter.checksum(), info->bytes,
                              absl::ToDoubleMilliseconds(out.took));
  return out;
}

absl::Status EnsureLoadedOnMiss(ServiceEnv& env, core::Engine& engine, const TenantCall& tenant,
                                const std::string& name) {
  // Only the caller's own adapters load on a miss, from its adapter directory.
  const std::string prefix = OwnPrefix(tenant.caller());
  if (!env.config.load_on_miss || name.empty() || !absl::StartsWith(name, prefix) ||
      engine.GetAdapter(name).ok()) {
    return absl::OkStatus();
  }
  const std::string local = name.substr(prefix.size());
  absl::StatusOr<RootLoad> load = BeginRootLoad(env, engine, tenant, name, local);
  if (!load.ok() && load.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(absl::StrCat("adapter ", name, " not found (not loaded, and no directory ", local,
                                            " under the adapter root to load it from)"));
  }
  if (!load.ok() && env.book.IsLoading(name)) {  // another request is loading it: wait for that
    const absl::Time deadline = absl::Now() + absl::Minutes(5);
    while (env.book.IsLoading(name) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    return engine.GetAdapter(name).status();
  }
  if (!load.ok()) return load.status();
  absl::StatusOr<RootLoadResult> done = FinishRootLoad(env, engine, tenant, *load);
  if (!done.ok()) {
    if (load->reserved) return done.status();
    return engine.GetAdapter(name).status();
  }
  if (!done->event.empty()) env.logger.Log("event=adapter_loaded_on_miss " + done->event);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdapterService::LoadAdapter(grpc::CallbackServerContext* context,
                                                      const pb::LoadAdapterRequest* request,
                                                      pb::LoadAdapterResponse* response) {
  auto* c = new UnaryCall(env_, context, "LoadAdapter");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto target = AdmitFor(c->call, request->name(), Role::kOperator, Access::kCreate);
  if (!target.ok()) {
    c->Finish(target.status());
    return reactor;
  }
  std::shared_ptr<core::Engine> engine = target->engine;
  absl::StatusOr<RootLoad> load = BeginRootLoad(*env_, *engine, c->call.tenant(), target->name, request->path());
  if (!load.ok()) {
    if (load.status().code() == absl::StatusCode::kResourceExhausted) c->call.set_retry_after(kAdapterQuotaRetryAfter);
    c->Finish(load.status());
    return reactor;
  }
  load->register_only = request->register_only();
  env_->pool->Post([c, engine, load = *std::move(load), response] {
    absl::StatusOr<RootLoadResult> r = FinishRootLoad(*c->env, *engine, c->call.tenant(), load);
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kResourceExhausted) c->call.set_retry_after(kAdapterQuotaRetryAfter);
      return c->Finish(r.status());
    }
    response->set_already_loaded(r->already_loaded);
    *response->mutable_adapter() = std::move(r->adapter);
    if (!r->already_loaded) c->call.LogEvent("adapter_loaded", r->event);
    c->Finish(absl::OkStatus());
  });
  return reactor;
}

grpc::ServerReadReactor<pb::UploadAdapterRequest>* AdapterService::UploadAdapter(
    grpc::CallbackServerContext* context, pb::UploadAdapterResponse* response) {
  return new UploadReactor(env_, context, response);
}

grpc::ServerUnaryReactor* AdapterService::GetAdapter(grpc::CallbackServerContext* context,
                                                     const pb::GetAdapterRequest* request,
                                                     pb::GetAdapterResponse* response) {
  auto* c = new UnaryCall(env_, context, "GetAdapter");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto target = AdmitFor(c->call, request->name(), Role::kUser, Access::kUse);
  absl::Status s = target.status();
  if (s.ok()) {
    if (env_->book.IsLoading(target->name)) {
      *response->mutable_adapter() = LoadingAdapterToProto(request->name());
    } else {
      absl::StatusOr<core::AdapterInfo> info = target->engine->GetAdapter(target->name);
      s = info.status();
      if (s.ok()) *response->mutable_adapter() = Describe(*env_, c->call.tenant(), *target->engine, *info);
    }
  }
  c->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* AdapterService::ListAdapters(grpc::CallbackServerContext* context,
                                                       const pb::ListAdaptersRequest* /*request*/,
                                                       pb::ListAdaptersResponse* response) {
  auto* c = new UnaryCall(env_, context, "ListAdapters");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto engine = c->call.Admit();
  if (engine.ok()) {
    std::vector<pb::Adapter> all;
    std::set<std::string> listed;
    const Caller& caller = c->call.caller();
    for (const core::AdapterInfo& info : (*engine)->ListAdapters()) {
      if (!DisplayAdapterName(caller, info.name).has_value()) continue;  // another tenant's
      all.push_back(Describe(*env_, c->call.tenant(), **engine, info));
      listed.insert(info.name);
    }
    // A load that just finished is in the engine already while the book still says loading.
    for (const std::string& name : env_->book.Loading()) {
      std::optional<std::string> shown = DisplayAdapterName(caller, name);
      if (listed.count(name) == 0 && shown.has_value()) all.push_back(LoadingAdapterToProto(*shown));
    }
    std::sort(all.begin(), all.end(),
              [](const pb::Adapter& a, const pb::Adapter& b) { return a.name() < b.name(); });
    for (auto& a : all) *response->add_adapters() = std::move(a);
  }
  c->Finish(engine.status());
  return reactor;
}

absl::Status DeleteAdapterNamed(ServiceEnv& env, core::Engine& engine, const std::string& name) {
  if (env.book.IsLoading(name)) {
    return absl::FailedPreconditionError(absl::StrCat("adapter ", name, " is still loading"));
  }
  absl::Status deleted = engine.DeleteAdapter(name);
  if (!deleted.ok()) {
    // A record whose restore failed at start names no loaded adapter: deleting the name drops it.
    if (deleted.code() == absl::StatusCode::kNotFound) (void)PersistAdapter(env, engine, name);
    return deleted;
  }
  std::optional<AdapterProvenance> p = env.book.Forget(name);
  // The record goes before the files it names.
  absl::Status persisted = PersistAdapter(env, engine, name);
  if (p.has_value() && persisted.ok()) RemoveUploads(&env, {*p});
  if (!persisted.ok()) {
    return absl::InternalError(absl::StrCat("adapter ", name, " was deleted, but it will be back after a restart: ",
                                            persisted.message()));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdapterService::DeleteAdapter(grpc::CallbackServerContext* context,
                                                        const pb::DeleteAdapterRequest* request,
                                                        pb::DeleteAdapterResponse* /*response*/) {
  auto* c = new UnaryCall(env_, context, "DeleteAdapter");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto target = AdmitFor(c->call, request->name(), Role::kOperator, Access::kManage);
  absl::Status s = target.status();
  if (s.ok()) s = DeleteAdapterNamed(*env_, *target->engine, target->name);
  if (s.ok()) c->call.LogEvent("adapter_deleted", absl::StrCat("name=", target->name));
  c->Finish(s);
  return reactor;
}

namespace {

// The shared tail of MergeAdapter / UnmergeAdapter, on the pool once the engine has answered
// (`op` = "merge" | "unmerge"): the metric, the adapter's description into `adapter`, the event
// line (`fields` before the duration), the reply.
void FinishMergeOp(UnaryCall* c, core::Engine& engine, const std::string& name, const char* op,
                   absl::Time start, absl::string_view fields, pb::Adapter* adapter) {
  const absl::Duration took = absl::Now() - start;
  c->env->metrics->RecordAdapterMerge(op, took);
  absl::StatusOr<core::AdapterInfo> info = engine.GetAdapter(name);
  if (info.ok()) *adapter = Describe(*c->env, c->call.tenant(), engine, *info);
  c->call.LogEvent(absl::StrCat("adapter_", op, "d"),
                   absl::StrFormat("name=%s %sms=%.1f", name, fields, absl::ToDoubleMilliseconds(took)));
  c->Finish(info.status());
}

// After a merge (`merged`) or an unmerge of `name`: records the merge order under --state_dir;
// when that fails, undoes the change (so the served weights match what a restart restores) and
// says so. Pool thread.
absl::Status PersistMergeOrUndo(ServiceEnv& env, const std::shared_ptr<core::Engine>& engine, const std::string& name,
                                bool merged) {
  absl::Status s = PersistMerges(env, *engine);
  if (s.ok()) return s;
  absl::Notification undone;
  if (merged) {
    engine->UnmergeAdapter(name, [&](absl::Status) { undone.Notify(); });
  } else {
    engine->MergeAdapter(name, [&](absl::StatusOr<bool>) { undone.Notify(); });
  }
  undone.WaitForNotification();
  return absl::InternalError(absl::StrCat(merged ? "the merge of " : "the unmerge of ", name,
                                          " was undone: ", s.message()));
}

}  // namespace

grpc::ServerUnaryReactor* AdapterService::MergeAdapter(grpc::CallbackServerContext* context,
                                                       const pb::MergeAdapterRequest* request,
                                                       pb::MergeAdapterResponse* response) {
  auto* c = new UnaryCall(env_, context, "MergeAdapter");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  // A merge changes the weights every tenant's requests run on: admins only.
  auto target = AdmitFor(c->call, request->name(), Role::kAdmin, Access::kManage);
  if (!target.ok()) {
    c->Finish(target.status());
    return reactor;
  }
  std::shared_ptr<core::Engine> engine = target->engine;
  const std::string name = target->name;
  const absl::Time start = absl::Now();
  engine->MergeAdapter(name, [c, engine, name, response, start](absl::StatusOr<bool> merged) {
    // Engine thread: hand the follow-up (which calls back into the engine) to the pool.
    c->env->pool->Post([c, engine, name, response, start, merged = std::move(merged)] {
      if (!merged.ok()) return c->Finish(merged.status());
      if (absl::Status s = PersistMergeOrUndo(*c->env, engine, name, /*merged=*/true); !s.ok()) return c->Finish(s);
      response->set_already_merged(!*merged);
      FinishMergeOp(c, *engine, name, "merge", start,
                    *merged ? "already_merged=false " : "already_merged=true ",
                    response->mutable_adapter());
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdapterService::UnmergeAdapter(grpc::CallbackServerContext* context,
                                                         const pb::UnmergeAdapterRequest* request,
                                                         pb::UnmergeAdapterResponse* response) {
  auto* c = new UnaryCall(env_, context, "UnmergeAdapter");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  // A merge changes the weights every tenant's requests run on: admins only.
  auto target = AdmitFor(c->call, request->name(), Role::kAdmin, Access::kManage);
  if (!target.ok()) {
    c->Finish(target.status());
    return reactor;
  }
  std::shared_ptr<core::Engine> engine = target->engine;
  const std::string name = target->name;
  const absl::Time start = absl::Now();
  engine->UnmergeAdapter(name, [c, engine, name, response, start](absl::Status done) {
    c->env->pool->Post([c, engine, name, response, start, done] {
      if (!done.ok()) return c->Finish(done);
      if (absl::Status s = PersistMergeOrUndo(*c->env, engine, name, /*merged=*/false); !s.ok()) return c->Finish(s);
      FinishMergeOp(c, *engine, name, "unmerge", start, "", response->mutable_adapter());
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdapterService::UnloadAll(grpc::CallbackServerContext* context,
                                                    const pb::UnloadAllRequest* /*request*/,
                                                    pb::UnloadAllResponse* response) {
  auto* c = new UnaryCall(env_, context, "UnloadAll");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto engine_or = c->call.Admit();
  absl::Status s = engine_or.status();
  if (s.ok()) s = RequireRole(c->call.caller(), Role::kAdmin, "UnloadAll");
  if (!s.ok()) {
    c->Finish(s);
    return reactor;
  }
  std::shared_ptr<core::Engine> engine = *std::move(engine_or);
  std::vector<std::string> names;
  for (const core::AdapterInfo& info : engine->ListAdapters()) names.push_back(info.name);
  engine->UnloadAll([c, engine, response, names = std::move(names)](absl::Status done) {
    if (!done.ok()) return c->Finish(done);
    c->env->pool->Post([c, engine, response, names] {
      // The records go before the files they name.
      absl::Status s = PersistMerges(*c->env, *engine);
      for (const std::string& name : names) {
        if (s.ok()) s = PersistAdapter(*c->env, *engine, name);
      }
      if (s.ok()) RemoveUploads(c->env, c->env->book.ForgetAll());
      if (!s.ok()) {
        (void)c->env->book.ForgetAll();
        s = absl::InternalError(absl::StrCat("the adapters were unloaded, but some will be back after a restart: ",
                                             s.message()));
      }
      response->set_deleted(static_cast<int>(names.size()));
      c->call.LogEvent("adapters_unloaded", absl::StrCat("count=", names.size()));
      c->Finish(s);
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdapterService::CombineAdapters(grpc::CallbackServerContext* context,
                                                          const pb::CombineAdaptersRequest* request,
                                                          pb::CombineAdaptersResponse* response) {
  auto* c = new UnaryCall(env_, context, "CombineAdapters");
  grpc::ServerUnaryReactor* reactor = c->reactor();
  auto target = AdmitFor(c->call, request->name(), Role::kOperator, Access::kCreate);
  absl::Status s = target.status();
  std::vector<std::string> sources;
  for (const auto& src : request->sources()) {
    if (!s.ok()) break;
    absl::StatusOr<std::string> source = c->call.tenant().Resolve(src.name(), Access::kUse, "sources.name");
    s = source.status();
    if (s.ok()) sources.push_back(*source);
  }
  absl::StatusOr<core::CombineOptions> options = CombineOptionsFromProto(*request);
  if (s.ok()) s = options.status();
  if (s.ok() && env_->book.IsLoading(target->name)) {
    s = absl::AlreadyExistsError(absl::StrCat("adapter ", target->name, " is being loaded"));
  }
  if (s.ok() && !target->engine->GetAdapter(target->name).ok()) {
    s = CheckAdapterQuota(*env_, *target->engine, c->call.caller(), target->name, 0, /*already_counted=*/false);
    if (!s.ok()) c->call.set_retry_after(kAdapterQuotaRetryAfter);
  }
  if (!s.ok()) {
    c->Finish(s);
    return reactor;
  }
  const std::string name = target->name;
  std::shared_ptr<core::Engine> engine = target->engine;
  const std::string model_name = engine->model_name();
  const std::string type = core::CombinationTypeName(options->type);
  std::string recipe;
  if (env_->state != nullptr) recipe = CombineRecipe(*request, sources);
  engine->CombineAdapters(
      name, sources, *options,
      [c, engine, response, model_name, type, sources, recipe](absl::StatusOr<core::AdapterInfo> info) {
        if (!info.ok()) return c->Finish(info.status());
        auto reply = [c, engine, response, model_name, type, sources](const core::AdapterInfo& info,
                                                                      const AdapterProvenance& p) {
          *response->mutable_adapter() = AdapterToProto(info, p, c->call.caller().adapter_root, model_name);
          response->mutable_adapter()->set_name(c->call.tenant().Display(info.name));
          c->call.LogEvent("adapter_combined",
                           absl::StrFormat("name=%s type=%s sources=%s rank=%d", info.name, type,
                                           absl::StrJoin(sources, ","), info.max_rank));
          c->Finish(absl::OkStatus());
        };
        AdapterProvenance p;
        p.origin = AdapterOrigin::kCombined;
        if (c->env->state == nullptr) {
          c->env->book.Record(info->name, p);
          return reply(*info, p);
        }
        // Under --state_dir the combination is saved (its weights, not just the recipe: the
        // sources may go) and recorded before the reply. Engine thread: file work on the pool.
        p.recipe_json = recipe;
        c->env->pool->Post([c, engine, info = *info, p, reply]() mutable {
          auto fail = [c, engine, name = info.name](const std::string& dir, const absl::Status& s) {
            (void)engine->DeleteAdapter(name);
            if (!dir.empty()) transfer::RemoveTree(dir);
            c->Finish(absl::InternalError(absl::StrCat("adapter ", name, " was not combined: ", s.message())));
          };
          absl::StatusOr<std::string> dir = transfer::MakeUniqueDir(c->env->state->files_dir(), "combined-");
          if (!dir.ok()) return fail("", dir.status());
          engine->SaveAdapter(info.name, *dir, [c, engine, info, p, reply, fail, dir = *dir](absl::Status saved) mutable {
            c->env->pool->Post([c, engine, info, p, reply, fail, dir, saved]() mutable {
              absl::Status s = saved;
              if (s.ok()) s = core::SyncTree(dir);
              absl::StatusOr<std::string> checksum = s.ok() ? transfer::AdapterChecksumOfDir(dir) : s;
              if (!checksum.ok()) return fail(dir, checksum.status());
              p.upload_dir = dir;
              p.files_checksum = *checksum;
              c->env->book.Record(info.name, p);
              if (absl::Status persisted = PersistAdapter(*c->env, *engine, info.name); !persisted.ok()) {
                (void)c->env->book.Forget(info.name);
                return fail(dir, persisted);
              }
              reply(info, p);
            });
          });
        });
      });
  return reactor;
}

grpc::ServerWriteReactor<pb::SaveAdapterResponse>* AdapterService::SaveAdapter(
    grpc::CallbackServerContext* context, const pb::SaveAdapterRequest* request) {
  auto* r = new FileStreamReactor<pb::SaveAdapterResponse>(env_, context, "SaveAdapter");
  auto target = AdmitFor(r->call(), request->name(), Role::kOperator, Access::kUse);
  if (!target.ok()) {
    r->FinishWith(target.status());
    return r;
  }
  std::shared_ptr<core::Engine> engine = target->engine;
  const std::string name = target->name;
  r->Start([engine, name](const std::string& dir, std::function<void(absl::Status)> done) {
    engine->SaveAdapter(name, dir, std::move(done));
  });
  return r;
}

grpc::ServerWriteReactor<pb::ExportMergedModelResponse>* AdapterService::ExportMergedModel(
    grpc::CallbackServerContext* context, const pb::ExportMergedModelRequest* request) {
  auto* r = new FileStreamReactor<pb::ExportMergedModelResponse>(env_, context, "ExportMergedModel");
  std::vector<std::string> names(request->adapters().begin(), request->adapters().end());
  r->call().set_adapter(absl::StrJoin(names, ","));
  auto engine_or = r->call().Admit();
  absl::Status s = engine_or.status();
  if (s.ok()) s = RequireRole(r->call().caller(), Role::kOperator, "ExportMergedModel");
  if (s.ok() && static_cast<int>(names.size()) > kMaxExportAdapters) {
    s = absl::InvalidArgumentError(absl::StrCat("at most ", kMaxExportAdapters, " adapters"));
  }
  for (auto& n : names) {
    if (!s.ok()) break;
    absl::StatusOr<std::string> internal = r->call().tenant().Resolve(n, Access::kUse, "adapters");
    s = internal.status();
    if (s.ok()) n = *internal;
  }
  if (!s.ok()) {
    r->FinishWith(s);
    return r;
  }
  std::shared_ptr<core::Engine> engine = *std::move(engine_or);
  r->Start([engine, names](const std::string& dir, std::function<void(absl::Status)> done) {
    engine->ExportMergedModel(names, dir, std::move(done));
  });
  return r;
}

}  // namespace loraserve::server
