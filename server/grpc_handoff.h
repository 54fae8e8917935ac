// ThreadSanitizer's view of gRPC's callback API. Debian's gRPC is not instrumented: when one of
// our threads starts an operation on a reactor (StartWrite, StartRead, Finish) and gRPC later
// runs the reactor's reaction (OnWriteDone, OnReadDone, OnCancel, OnDone) on one of its threads,
// gRPC orders the two with atomics TSan cannot see, so the reaction's accesses to the reactor
// would pair up as races with the thread that started the operation. GrpcHandoff(reactor) just
// before each such call and GrpcReaction(reactor) first thing in each reaction tell TSan about the
// ordering gRPC provides, for that reactor only (a release and an acquire on its address). No-ops
// outside TSan builds.
#ifndef LORASERVE_SERVER_GRPC_HANDOFF_H_
#define LORASERVE_SERVER_GRPC_HANDOFF_H_

#if defined(__SANITIZE_THREAD__)
#define LORASERVE_TSAN_ANNOTATIONS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LORASERVE_TSAN_ANNOTATIONS 1
#endif
#endif

#include "absl/status/status.h"
#include "server/service_env.h"

#ifdef LORASERVE_TSAN_ANNOTATIONS
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace loraserve::server {

inline void GrpcHandoff(const void* reactor) {
#ifdef LORASERVE_TSAN_ANNOTATIONS
  __tsan_release(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}

inline void GrpcReaction(const void* reactor) {
#ifdef LORASERVE_TSAN_ANNOTATIONS
  __tsan_acquire(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}

// Completes `call`'s record (metrics, access log, trailing metadata) and finishes `reactor`'s RPC
// with its status, the handoff between the two: after the last write to the call, before gRPC may
// run OnDone on another thread. Must be the caller's last use of the reactor.
template <typename Reactor>
void FinishRpc(Reactor* reactor, RpcCall& call, const absl::Status& status) {
  const grpc::Status out = call.Complete(status);
  GrpcHandoff(reactor);
  reactor->Finish(out);
}

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_GRPC_HANDOFF_H_
