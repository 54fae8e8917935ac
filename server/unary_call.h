// A unary RPC in flight on the callback API: its RpcCall record and reactor. Created by a service
// handler, finished exactly once from whichever thread completes the work (an RPC thread, the
// engine thread or the WorkPool); Finish() deletes it.
#ifndef LORASERVE_SERVER_UNARY_CALL_H_
#define LORASERVE_SERVER_UNARY_CALL_H_

#include <grpcpp/support/server_callback.h>

#include "absl/status/status.h"
#include "server/service_env.h"

namespace loraserve::server {

class UnaryCall {
 public:
  UnaryCall(ServiceEnv* env, grpc::CallbackServerContext* context, const char* rpc)
      : env(env), call(env, context, rpc), reactor_(context->DefaultReactor()) {}

  grpc::ServerUnaryReactor* reactor() const { return reactor_; }

  // Completes the record (trailing metadata, metrics, access log) and finishes the RPC; `this` is
  // deleted. Must be the caller's last use of the call and of its response message.
  void Finish(const absl::Status& status) {
    grpc::ServerUnaryReactor* reactor = reactor_;
    const grpc::Status out = call.Complete(status);
    delete this;
    reactor->Finish(out);
  }

  ServiceEnv* const env;
  RpcCall call;

 private:
  grpc::ServerUnaryReactor* reactor_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_UNARY_CALL_H_
