// loraserve.v1.InferenceService over the engine: Generate (server streaming), Score, Tokenize,
// Detokenize. Handlers validate, convert and submit; engine callbacks (engine thread) only queue
// writes and finish reactors.
// Thread-safe (gRPC calls the handlers concurrently).
#ifndef LORASERVE_SERVER_INFERENCE_SERVICE_H_
#define LORASERVE_SERVER_INFERENCE_SERVICE_H_

#include "loraserve/v1/inference_service.grpc.pb.h"
#include "server/service_env.h"

namespace loraserve::server {

class InferenceService final : public loraserve::v1::InferenceService::CallbackService {
 public:
  explicit InferenceService(ServiceEnv* env) : env_(env) {}

  grpc::ServerWriteReactor<loraserve::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const loraserve::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const loraserve::v1::ScoreRequest* request,
                                  loraserve::v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const loraserve::v1::TokenizeRequest* request,
                                     loraserve::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const loraserve::v1::DetokenizeRequest* request,
                                       loraserve::v1::DetokenizeResponse* response) override;

 private:
  ServiceEnv* env_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_INFERENCE_SERVICE_H_
