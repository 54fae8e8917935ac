// The OpenAI-compatible HTTP API on the server's HTTP port, over the same engine, bearer tokens,
// queues and metrics as the gRPC services:
//   GET  /v1/models        the base model and every loaded adapter (`model` selects the adapter,
//                          as in vLLM and LoRAX; the base model answers to its name)
//   POST /v1/completions   prompt as text or token ids; max_tokens, temperature, top_p, stop,
//                          seed, logprobs (0..5), echo, n = 1, stream (server-sent events ending
//                          in `data: [DONE]`), usage; vLLM's `ignore_eos`
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter   vLLM's shapes ({"lora_name",
//                          "lora_path"}); the path must lie under --adapter_root (relative to it,
//                          or absolute inside it); the same book-keeping as gRPC Load/DeleteAdapter
//   POST /v1/chat/completions   messages rendered by the model's chat template (chat_template.jinja
//                          or tokenizer_config.json; 400 when it has none), then as a completion
//                          (same sampling fields, max_completion_tokens, streaming deltas);
//                          logprobs not yet (400)
// Errors come in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with the HTTP
// status of the failure: 400 bad input (malformed JSON, wrong types, unknown or unsupported
// fields), 401 missing or unknown token, 404 unknown model, 429 queue full (with retry-after-ms),
// 503 starting or draining, 500 otherwise. A client that disconnects cancels its request: a
// streaming one at the next token, a non-streaming one at the next heartbeat (HttpOptions::
// completion_heartbeat: after that long it answers 200 and sends spaces until its body).
//
// Each request holds one HTTP thread until it finishes (--http_threads bounds how many OpenAI
// requests run at once). Thread-safe.
#ifndef LORASERVE_SERVER_OPENAI_API_H_
#define LORASERVE_SERVER_OPENAI_API_H_

#include "server/http_endpoint.h"

namespace loraserve::server {

struct ServiceEnv;

class OpenAiApi {
 public:
  // `heartbeat`: HttpOptions::completion_heartbeat.
  OpenAiApi(ServiceEnv* env, absl::Duration heartbeat) : env_(env), heartbeat_(heartbeat) {}
  // Adds the /v1 routes to `http` (before it starts).
  void Register(HttpEndpoint* http);

 private:
  HttpEndpoint::Response Models(const HttpEndpoint::Request& request);
  // /v1/completions, or /v1/chat/completions (`chat`: the messages through the model's chat template).
  HttpEndpoint::Response Completions(const HttpEndpoint::Request& request, bool chat);
  HttpEndpoint::Response LoadLora(const HttpEndpoint::Request& request);
  HttpEndpoint::Response UnloadLora(const HttpEndpoint::Request& request);

  ServiceEnv* const env_;
  const absl::Duration heartbeat_;
};

}  // namespace loraserve::server

#endif  // LORASERVE_SERVER_OPENAI_API_H_
