#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"

namespace loraserve::server {

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection (grpc.reflection.v1alpha) so grpcurl-style tools can discover the API.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<Server> s(new Server());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &s->port_);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on ", options.listen_address));
  }
  s->SetServing(false);
  return s;
}

Server::~Server() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
}

void Server::SetServing(bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(serving);
}

void Server::Shutdown(absl::Duration grace) {
  SetServing(false);
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
}

void Server::Wait() { server_->Wait(); }

}  // namespace loraserve::server
