// loraserve.v1.AdapterService over the engine. Blocking file work (reading adapters, writing
// uploads, streaming saved files) runs on the WorkPool; merge / unmerge / unload / combine / save /
// export complete from the engine thread, whose callbacks only post or finish.
// Thread-safe (gRPC calls the handlers concurrently).
#ifndef LORASERVE_SERVER_ADAPTER_SERVICE_H_
#define LORASERVE_SERVER_ADAPTER_SERVICE_H_

#include "loraserve/v1/adapter_service.grpc.pb.h"
#include "server/service_env.h"

namespace loraserve::server {

// LoadAdapter from --adapter_root for any transport (gRPC's LoadAdapter, the HTTP API's
// /v1/load_lora_adapter). BeginRootLoad is cheap (path rules; reserves a free name so it lists as
// LOADING); FinishRootLoad does the file I/O (blocking: call it on a pool or HTTP thread).
struct RootLoad {
  std::string name;
  std::string dir;        // absolute, under the root
  bool reserved = false;  // the name was free and is now reserved in the book
  bool register_only = false;  // LoadAdapterRequest.register_only
};
struct RootLoadResult {
  loraserve::v1::Adapter adapter;
  bool already_loaded = false;  // the same files were loaded under that name before
  absl::Duration took;
  std::string relative_path;
  std::string event;  // the adapter_loaded event's fields (empty when already loaded)
};
// `name` is the engine's name (TenantCall::Resolve); `path` resolves below the caller's adapter
// directory; the adapter quota is checked when the name is free.
absl::StatusOr<RootLoad> BeginRootLoad(ServiceEnv& env, const core::Engine& engine, const TenantCall& tenant,
                                       const std::string& name, const std::string& path);
// Also enforces the byte quota (the adapter is deleted again when over it).
absl::StatusOr<RootLoadResult> FinishRootLoad(ServiceEnv& env, core::Engine& engine, const TenantCall& tenant,
                                              const RootLoad& load);
// Load-on-miss (ServiceConfig::load_on_miss) for any transport: when the caller's own adapter
// `name` (the engine's name) is not loaded, loads it from the caller's adapter directory as
// LoadAdapter would (blocking), or waits for a concurrent load of it. OK when the adapter is
// loaded afterwards, or when load-on-miss is off or `name` is not the caller's own (the caller's
// own checks then answer); otherwise the load's error (NotFound without such a directory).
absl::Status EnsureLoadedOnMiss(ServiceEnv& env, core::Engine& engine, const TenantCall& tenant,
                                const std::string& name);
// DeleteAdapter for any transport: FailedPrecondition while loading; uploads' files are removed.
absl::Status DeleteAdapterNamed(ServiceEnv& env, core::Engine& engine, const std::string& name);

class AdapterService final : public loraserve::v1::AdapterService::CallbackService {
 public:
  explicit AdapterService(ServiceEnv* env) : env_(env) {}

  grpc::ServerUnaryReactor* LoadAdapter(grpc::CallbackServerContext* context,
                                        const loraserve::v1::LoadAdapterRequest* request,
                                        loraserve::v1::LoadAdapterResponse* response) override;
  grpc::ServerReadReactor<loraserve::v1::UploadAdapterRequest>* UploadAdapter(
      grpc::CallbackServerContext* context, loraserve::v1::UploadAdapterResponse* response) override;
  grpc::ServerUnaryReactor* GetAdapter(grpc::CallbackServerContext* context,
                                       const loraserve::v1::GetAdapterRequest* request,
                                       loraserve::v1::GetAdapterResponse* response) override;
  grpc::ServerUnaryReactor* ListAdapters(grpc::CallbackServerContext* context,
                                         const loraserve::v1::ListAdaptersRequest* request,
                                         loraserve::v1::ListAdaptersResponse* response) override;
  grpc::ServerUnaryReactor* DeleteAdapter(grpc::CallbackServerContext* context,
                                          const loraserve::v1::DeleteAdapterRequest* request,
                                          loraserve::v1::DeleteAdapterResponse* response) override;
  grpc::ServerUnaryReactor* MergeAdapter(grpc::CallbackServerContext* context,
                                         const loraserve::v1::MergeAdapterRequest* request,
                                         loraserve::v1::MergeAdapterResponse* response) override;
  grpc::ServerUnaryReactor* UnmergeAdapter(grpc::CallbackServerContext* context,
                                           const loraserve::v1::UnmergeAdapterRequest* request,
                                           loraserve::v1::UnmergeAdapterResponse* response) override;
  grpc::ServerUnaryReactor* UnloadAll(grpc::CallbackServerContext* context,
                                      const loraserve::v1::UnloadAllRequest* request,
                                      loraserve::v1::UnloadAllResponse* response) override;
  grpc::ServerUnaryReactor* CombineAdapters(grpc::CallbackServerContext* context,
                                            const loraserve::v1::CombineAdaptersRequest* request,
                                            loraserve::v1::CombineAdaptersResponse* response) override;
  grpc::ServerWriteReactor<loraserve::v1::SaveAdapterResponse>* SaveAdapter(
      grpc::CallbackServerContext* context, const loraserve::v1::SaveAdapterRequest* request) override;
  grpc::ServerWriteReactor<loraserve::v1::ExportMergedModelResponse>* ExportMergedModel(
      grpc::CallbackServerContext* context,
      const loraserve::v1::ExportMergedModelRequest* request) override;

 private:
  ServiceEnv* env_;
};

// The directory `relative` names below `root` (canonical, symbolic links resolved).
// FailedPrecondition when `root` is empty; InvalidArgument for an empty or absolute path or one
// that resolves outside `root`; NotFound when it does not exist or is not a directory. Messages
// name only `relative`, never the root.
absl::StatusOr<std::string> ResolveUnderRoot(const std::string& root, const std::string& relative);

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_ADAPTER_SERVICE_H_
