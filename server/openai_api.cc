#include "server/openai_api.h"

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/base/status_macros.h"
#include "core/engine/engine.h"
#include "nlohmann/json.hpp"
#include "server/adapter_service.h"
#include "server/proto_convert.h"
#include "server/service_env.h"

namespace loraserve::server {
namespace {

using Json = nlohmann::json;
using Request = HttpEndpoint::Request;
using Response = HttpEndpoint::Response;

constexpr int kMaxLogprobs = 5;  // OpenAI's limit for /v1/completions

// A 4xx/5xx in OpenAI's error shape.
Response Error(int status, const std::string& message, const std::string& param = "",
               const std::string& code = "") {
  const char* type = status == 401   ? "authentication_error"
                     : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error"
                     : status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  Json error = {{"message", message},
                {"type", type},
                {"param", param.empty() ? Json(nullptr) : Json(param)},
                {"code", code.empty() ? Json(nullptr) : Json(code)}};
  return HttpEndpoint::Reply(status, Json{{"error", error}}.dump() + "\n", "application/json");
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

Response ErrorOf(const absl::Status& s, const std::string& param = "") {
  return Error(HttpStatusOf(s.code()), std::string(s.message()), param);
}

const char* FinishReasonOf(core::FinishReason r) {
  return r == core::FinishReason::kLength ? "length" : "stop";
}

std::string NewCompletionId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("cmpl-%016x%08x", rng(), static_cast<uint32_t>(rng()));
}

// What a /v1/completions body asks for.
struct Completion {
  std::string model;
  std::string adapter;  // "" = the base model
  std::vector<int32_t> prompt_ids;
  std::string prompt_text;  // for echo
  bool echo = false;
  bool stream = false;
  bool include_usage = false;
  int logprobs = -1;  // -1: none
  core::SamplingOptions sampling;
};

// Parses and checks `body`; `param` names the offending field on error (InvalidArgument; NotFound
// for an unknown model).
absl::StatusOr<Completion> ParseCompletion(const Json& body, core::Engine& engine, TenantCall& tenant,
                                           std::string* param) {
  if (!body.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  static const char* const kKnown[] = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop",
                                       "seed", "stream", "stream_options", "logprobs", "echo", "n",
                                       "best_of", "presence_penalty", "frequency_penalty", "logit_bias",
                                       "suffix", "user", "ignore_eos"};
  for (const auto& [key, value] : body.items()) {
    if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown)) {
      *param = key;
      return absl::InvalidArgumentError(absl::StrCat("Unrecognized request argument supplied: ", key));
    }
  }
  auto bad = [param](const char* field, const std::string& message) {
    *param = field;
    return absl::InvalidArgumentError(message);
  };
  auto present = [&body](const char* field) { return body.contains(field) && !body[field].is_null(); };
  Completion c;
  if (!body.contains("model") || !body["model"].is_string() || body["model"].get<std::string>().empty()) {
    return bad("model", "'model' is required: a non-empty string (the base model or an adapter)");
  }
  c.model = body["model"].get<std::string>();
  if (c.model != engine.model_name()) {
    absl::StatusOr<std::string> adapter = tenant.Resolve(c.model, Access::kUse, "model");
    if (!adapter.ok() && adapter.status().code() != absl::StatusCode::kNotFound) {
      return bad("model", std::string(adapter.status().message()));
    }
    // Another tenant's adapter is as unknown as a missing one.
    if (!adapter.ok() || !engine.GetAdapter(*adapter).ok()) {
      *param = "model";
      return absl::NotFoundError(absl::StrCat("The model '", c.model, "' does not exist"));
    }
    c.adapter = *std::move(adapter);
  }
  if (!body.contains("prompt")) return bad("prompt", "'prompt' is required");
  const Json& prompt = body["prompt"];
  if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    c.prompt_text = prompt[0].get<std::string>();
  } else if (prompt.is_string()) {
    c.prompt_text = prompt.get<std::string>();
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
    for (const Json& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= engine.vocab_size()) {
        return bad("prompt", absl::StrCat("token ids must be integers in [0, ", engine.vocab_size(), ")"));
      }
      c.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    c.prompt_text = engine.Detokenize(c.prompt_ids, /*skip_special_tokens=*/true);
  } else {
    return bad("prompt", "'prompt' must be a string, a list with one string, or a list of token ids "
                         "(several prompts in one request are not supported)");
  }
  if (c.prompt_ids.empty()) {
    if (c.prompt_text.empty()) return bad("prompt", "'prompt' is empty");
    c.prompt_ids = engine.Tokenize(c.prompt_text, /*add_special_tokens=*/true, /*parse_special=*/false);
  }
  c.sampling.max_new_tokens = 16;  // OpenAI's default
  if (present("max_tokens")) {
    if (!body["max_tokens"].is_number_integer() || body["max_tokens"].get<int64_t>() < 1 ||
        body["max_tokens"].get<int64_t>() > engine.max_context()) {
      return bad("max_tokens", absl::StrCat("'max_tokens' must be an integer in [1, ", engine.max_context(), "]"));
    }
    c.sampling.max_new_tokens = static_cast<int32_t>(body["max_tokens"].get<int64_t>());
  }
  if (present("temperature")) {
    if (!body["temperature"].is_number() || body["temperature"].get<double>() < 0 ||
        body["temperature"].get<double>() > 2) {
      return bad("temperature", "'temperature' must be a number in [0, 2]");
    }
    c.sampling.temperature = body["temperature"].get<double>();
  }
  if (present("top_p")) {
    if (!body["top_p"].is_number() || !(body["top_p"].get<double>() > 0) || body["top_p"].get<double>() > 1) {
      return bad("top_p", "'top_p' must be a number in (0, 1]");
    }
    c.sampling.top_p = body["top_p"].get<double>();
  }
  if (present("stop")) {
    const Json& stop = body["stop"];
    if (stop.is_string()) {
      c.sampling.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array() && stop.size() <= 4) {
      for (const Json& s : stop) {
        if (!s.is_string()) return bad("stop", "'stop' must be a string or a list of up to 4 strings");
        c.sampling.stop.push_back(s.get<std::string>());
      }
    } else {
      return bad("stop", "'stop' must be a string or a list of up to 4 strings");
    }
  }
  if (present("seed")) {
    if (!body["seed"].is_number_integer()) return bad("seed", "'seed' must be an integer");
    c.sampling.seed = body["seed"].is_number_unsigned() ? body["seed"].get<uint64_t>()
                                                        : static_cast<uint64_t>(body["seed"].get<int64_t>());
  }
  if (present("stream")) {
    if (!body["stream"].is_boolean()) return bad("stream", "'stream' must be a boolean");
    c.stream = body["stream"].get<bool>();
  }
  if (present("stream_options")) {
    const Json& o = body["stream_options"];
    if (!o.is_object() || (o.contains("include_usage") && !o["include_usage"].is_boolean())) {
      return bad("stream_options", "'stream_options' must be an object with a boolean 'include_usage'");
    }
    if (!c.stream) return bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    c.include_usage = o.value("include_usage", false);
  }
  if (present("echo")) {
    if (!body["echo"].is_boolean()) return bad("echo", "'echo' must be a boolean");
    c.echo = body["echo"].get<bool>();
  }
  if (present("logprobs")) {
    if (!body["logprobs"].is_number_integer() || body["logprobs"].get<int64_t>() < 0 ||
        body["logprobs"].get<int64_t>() > kMaxLogprobs) {
      return bad("logprobs", absl::StrCat("'logprobs' must be an integer in [0, ", kMaxLogprobs, "]"));
    }
    c.logprobs = static_cast<int>(body["logprobs"].get<int64_t>());
    c.sampling.logprobs = true;
    c.sampling.top_logprobs = c.logprobs;
  }
  auto must_be = [&](const char* field, double value) -> absl::Status {
    if (!present(field)) return absl::OkStatus();
    if (!body[field].is_number() || body[field].get<double>() != value) {
      return bad(field, absl::StrCat("'", field, "' other than ", value, " is not supported"));
    }
    return absl::OkStatus();
  };
  for (auto [field, value] : {std::pair<const char*, double>{"n", 1}, {"best_of", 1}, {"presence_penalty", 0},
                              {"frequency_penalty", 0}}) {
    if (absl::Status s = must_be(field, value); !s.ok()) return s;
  }
  if (present("logit_bias") && !(body["logit_bias"].is_object() && body["logit_bias"].empty())) {
    return bad("logit_bias", "'logit_bias' is not supported");
  }
  if (present("suffix") && !(body["suffix"].is_string() && body["suffix"].get<std::string>().empty())) {
    return bad("suffix", "'suffix' is not supported");
  }
  if (present("user") && !body["user"].is_string()) return bad("user", "'user' must be a string");
  if (present("ignore_eos")) {  // vLLM's extension
    if (!body["ignore_eos"].is_boolean()) return bad("ignore_eos", "'ignore_eos' must be a boolean");
    c.sampling.stop_on_eos = !body["ignore_eos"].get<bool>();
  }
  if (absl::Status s = core::ValidateSamplingOptions(c.sampling); !s.ok()) return bad("", std::string(s.message()));
  return c;
}

// One request's events, filled by the engine thread and read by the HTTP thread.
// A /v1/chat/completions body as the /v1/completions body it runs as: the messages rendered by the
// model's chat template and tokenized (special tokens parsed, none added: the template has them),
// the sampling fields passed through. Chat-only fields that are not supported yet are a 400.
absl::StatusOr<Json> ChatAsCompletion(const Json& body, core::Engine& engine, std::string* param) {
  if (!body.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  static const char* const kPassed[] = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream",
                                        "stream_options", "n", "presence_penalty", "frequency_penalty",
                                        "logit_bias", "user", "ignore_eos"};
  auto bad = [param](const char* field, const std::string& message) {
    *param = field;
    return absl::InvalidArgumentError(message);
  };
  Json out = Json::object();
  for (const auto& [key, value] : body.items()) {
    if (std::find(std::begin(kPassed), std::end(kPassed), key) != std::end(kPassed)) {
      out[key] = value;
    } else if (key == "max_completion_tokens") {
      if (!value.is_null()) out["max_tokens"] = value;
    } else if (key == "logprobs" || key == "top_logprobs") {
      if (!value.is_null() && value != Json(false)) {
        return bad(key == "logprobs" ? "logprobs" : "top_logprobs", "log-probabilities are not supported for chat completions yet");
      }
    } else if (key != "messages") {
      *param = key;
      return absl::InvalidArgumentError(absl::StrCat("Unrecognized request argument supplied: ", key));
    }
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return bad("messages", "'messages' is required: a non-empty list of {role, content}");
  }
  Json messages = Json::array();
  for (const Json& m : body["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return bad("messages", "each message must be an object with a string 'role'");
    }
    std::string content;
    const Json c = m.value("content", Json());
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {  // content parts: only text
      for (const Json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          return bad("messages", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        }
        content += part["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      return bad("messages", "a message's 'content' must be a string or a list of text parts");
    }
    messages.push_back(Json{{"role", m["role"]}, {"content", content}});
  }
  absl::StatusOr<std::string> text = engine.ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) {
    *param = "messages";
    return text.status();
  }
  std::vector<int32_t> ids = engine.Tokenize(*text, /*add_special_tokens=*/false, /*parse_special=*/true);
  if (ids.empty()) return bad("messages", "the chat template rendered an empty prompt");
  out["prompt"] = ids;
  // OpenAI's chat default: as many tokens as the context leaves.
  if (!out.contains("max_tokens") || out["max_tokens"].is_null()) {
    out["max_tokens"] = std::max<int64_t>(1, engine.max_context() - static_cast<int64_t>(ids.size()));
  }
  return out;
}

struct Pending {
  absl::Mutex mu;
  std::deque<core::TokenEvent> events ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::StatusOr<core::GenerationResult> result ABSL_GUARDED_BY(mu) = absl::UnknownError("not finished");
  core::RequestStats stats ABSL_GUARDED_BY(mu);
};

// OpenAI's legacy logprobs object for `events`, whose texts start at `offset` in the choice text;
// the alternatives are keyed by their token's text.
Json LogprobsOf(const std::vector<core::TokenEvent>& events, size_t offset, const core::Engine& engine) {
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(), offsets = Json::array();
  for (const core::TokenEvent& e : events) {
    tokens.push_back(e.text);
    token_logprobs.push_back(e.logprob);
    Json alternatives = Json::object();
    for (const core::TokenLogprob& t : e.top_logprobs) {
      alternatives[engine.Detokenize({t.id}, /*skip_special_tokens=*/false)] = t.logprob;
    }
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += e.text.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

Json UsageOf(const core::RequestStats& stats) {
  return {{"prompt_tokens", stats.prompt_tokens},
          {"completion_tokens", stats.completion_tokens},
          {"total_tokens", stats.prompt_tokens + stats.completion_tokens}};
}

// The bearer token check of the gRPC services, on the Authorization header.
absl::Status Authenticate(TenantCall& tenant, const Request& request) {
  const std::string header = request.header("authorization");
  return tenant.Authenticate(header.empty() ? std::nullopt : std::optional<absl::string_view>(header));
}

// How long a completion waits for one of its tenant's request slots before it is refused.
constexpr absl::Duration kMaxSlotWait = absl::Seconds(60);

std::string Sse(const Json& j) { return absl::StrCat("data: ", j.dump(), "\n\n"); }

}  // namespace

void OpenAiApi::Register(HttpEndpoint* http) {
  http->Route("GET", "/v1/models", [this](const Request& r) { return Models(r); });
  http->Route("POST", "/v1/completions", [this](const Request& r) { return Completions(r, /*chat=*/false); });
  http->Route("POST", "/v1/load_lora_adapter", [this](const Request& r) { return LoadLora(r); });
  http->Route("POST", "/v1/unload_lora_adapter", [this](const Request& r) { return UnloadLora(r); });
  http->Route("POST", "/v1/chat/completions", [this](const Request& r) { return Completions(r, /*chat=*/true); });
}

HttpEndpoint::Response OpenAiApi::Models(const Request& request) {
  const absl::Time start = absl::Now();
  auto fail = [&](const absl::Status& s) {
    env_->metrics->RecordRpc("OpenAI.Models", s.code(), absl::Now() - start);
    return ErrorOf(s);
  };
  TenantCall tenant(env_);
  if (absl::Status s = Authenticate(tenant, request); !s.ok()) return fail(s);
  auto engine = env_->engine.ForNewCall();
  if (!engine.ok()) return fail(engine.status());
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  Json data = Json::array();
  data.push_back({{"id", (*engine)->model_name()}, {"object", "model"}, {"created", created}, {"owned_by", "loraserve"},
                  {"root", (*engine)->model_name()}, {"parent", nullptr}, {"max_model_len", (*engine)->max_context()}});
  for (const core::AdapterInfo& a : (*engine)->ListAdapters()) {
    std::optional<std::string> id = DisplayAdapterName(tenant.caller(), a.name);
    if (!id.has_value()) continue;  // another tenant's
    data.push_back({{"id", *id}, {"object", "model"}, {"created", created}, {"owned_by", "loraserve"},
                    {"root", *id}, {"parent", (*engine)->model_name()}});
  }
  env_->metrics->RecordRpc("OpenAI.Models", absl::StatusCode::kOk, absl::Now() - start);
  return HttpEndpoint::Reply(200, Json{{"object", "list"}, {"data", data}}.dump() + "\n", "application/json");
}

HttpEndpoint::Response OpenAiApi::Completions(const Request& request, bool chat) {
  const absl::Time start = absl::Now();
  std::string request_id = request.header(kRequestIdKey);
  if (request_id.empty() || request_id.size() > 128) request_id = NewCompletionId();
  auto tenant = std::make_shared<TenantCall>(env_);
  auto finish = [this, start, request_id, chat, tenant](Response r, absl::StatusCode code, const std::string& model) {
    env_->metrics->RecordRpc(chat ? "OpenAI.ChatCompletions" : "OpenAI.Completions", code, absl::Now() - start);
    if (tenant->authenticated()) env_->metrics->RecordTenantRequest(tenant->caller().tenant->id, code);
    env_->logger.Log(absl::StrCat("event=http_request path=", chat ? "/v1/chat/completions" : "/v1/completions",
                                  " status=", r.status,
                                  " request_id=", LogValue(request_id), " model=", LogValue(model),
                                  " ms=", absl::ToInt64Milliseconds(absl::Now() - start)));
    r.headers[kRequestIdKey] = request_id;
    return r;
  };
  absl::Duration retry_after = absl::ZeroDuration();
  auto fail = [&](const absl::Status& engine_status, const std::string& param = "", const std::string& model = "") {
    const absl::Status s = tenant->Rename(engine_status);
    Response r = ErrorOf(s, param);
    if (s.code() == absl::StatusCode::kNotFound && param == "model") {
      r = Error(404, std::string(s.message()), "model", "model_not_found");
    }
    if (s.code() == absl::StatusCode::kFailedPrecondition && param == "messages") {
      r = Error(400, std::string(s.message()), "messages", "chat_template_missing");
    }
    if (s.code() == absl::StatusCode::kResourceExhausted) {
      const absl::Duration hint = retry_after > absl::ZeroDuration() ? retry_after : env_->metrics->RetryAfterHint();
      r.headers[kRetryAfterKey] = std::to_string(absl::ToInt64Milliseconds(hint));
    }
    return finish(std::move(r), s.code(), model);
  };
  if (absl::Status s = Authenticate(*tenant, request); !s.ok()) return fail(s);
  auto engine_or = env_->engine.ForNewCall();
  if (!engine_or.ok()) return fail(engine_or.status());
  std::shared_ptr<core::Engine> engine = *std::move(engine_or);
  Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return fail(absl::InvalidArgumentError("the request body is not valid JSON"));
  std::string param;
  if (body.is_object() && body.contains("model") && body["model"].is_string() &&
      body["model"].get<std::string>() != engine->model_name()) {
    absl::StatusOr<std::string> adapter = tenant->Resolve(body["model"].get<std::string>(), Access::kUse, "model");
    absl::Status s = adapter.ok() ? EnsureLoadedOnMiss(*env_, *engine, *tenant, *adapter) : absl::OkStatus();
    if (!s.ok()) return fail(s, "model", body["model"].get<std::string>());
  }
  if (chat) {
    absl::StatusOr<Json> as_completion = ChatAsCompletion(body, *engine, &param);
    if (!as_completion.ok()) return fail(as_completion.status(), param);
    body = *std::move(as_completion);
  }
  absl::StatusOr<Completion> parsed = ParseCompletion(body, *engine, *tenant, &param);
  if (!parsed.ok()) return fail(parsed.status(), param);
  Completion c = *std::move(parsed);

  // One of the tenant's request slots, waiting for it if need be (this is an HTTP thread); freed
  // when the generation ends.
  auto slot = std::make_shared<absl::Notification>();
  absl::StatusOr<bool> admitted = tenant->Enter([slot] { slot->Notify(); }, &retry_after);
  if (!admitted.ok()) return fail(admitted.status(), "", c.model);
  if (!*admitted && !slot->WaitForNotificationWithTimeout(kMaxSlotWait)) {
    if (tenant->Withdraw()) {
      return fail(absl::ResourceExhaustedError(absl::StrCat(
                      "waited ", absl::FormatDuration(kMaxSlotWait),
                      " for one of the tenant's concurrent_requests slots")),
                  "", c.model);
    }
    slot->WaitForNotification();  // admitted just now
  }

  auto pending = std::make_shared<Pending>();
  core::GenerateRequest req;
  req.request_id = request_id;
  req.adapter = c.adapter;
  req.tenant = tenant->caller().tenant->id;
  req.tenant_weight = tenant->caller().tenant->weight;
  req.prompt_ids = c.prompt_ids;
  req.sampling = c.sampling;
  core::GenerateCallbacks callbacks;
  callbacks.on_token = [pending](const core::TokenEvent& e) {
    absl::MutexLock lock(&pending->mu);
    pending->events.push_back(e);
  };
  ServiceEnv* env = env_;
  const std::string adapter = c.adapter;
  callbacks.on_done = [pending, env, adapter, tenant](absl::StatusOr<core::GenerationResult> r,
                                                     const core::RequestStats& stats) {
    env->metrics->RecordGeneration(adapter, stats);
    env->metrics->RecordTenantTokens(tenant->caller().tenant->id, stats.prompt_tokens, stats.completion_tokens,
                                     stats.queue_time);
    tenant->Leave(stats.prompt_tokens + stats.completion_tokens);
    absl::MutexLock lock(&pending->mu);
    pending->result = std::move(r);
    pending->stats = stats;
    pending->done = true;
  };
  auto handle = engine->SubmitGenerate(std::move(req), std::move(callbacks));
  if (!handle.ok()) return fail(handle.status(), "", c.model);

  const int64_t created = absl::ToUnixSeconds(absl::Now());
  // Chat: an assistant message (streamed as deltas; the last chunk's delta is empty).
  auto choice = [chat, stream = c.stream](std::string text, Json logprobs, Json finish_reason) {
    if (!chat) {
      return Json{{"text", std::move(text)}, {"index", 0}, {"logprobs", std::move(logprobs)},
                  {"finish_reason", std::move(finish_reason)}};
    }
    Json message = Json::object();
    if (!stream || !text.empty() || finish_reason.is_null()) message = {{"role", "assistant"}, {"content", std::move(text)}};
    return Json{{"index", 0}, {stream ? "delta" : "message", std::move(message)}, {"logprobs", nullptr},
                {"finish_reason", std::move(finish_reason)}};
  };
  // Copied into the stream below, which outlives this function: captures by value only.
  auto envelope = [request_id, created, model = c.model,
                   object = chat ? (c.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion"](Json choices) {
    return Json{{"id", request_id}, {"object", object}, {"created", created},
                {"model", model}, {"choices", std::move(choices)}};
  };
  auto has_event_or_done = [pending]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pending->mu) {
    return pending->done || !pending->events.empty();
  };

  if (!c.stream) {
    // The whole answer, or the error (status and OpenAI error JSON), once generation is done.
    auto answer = [pending, engine, c, choice, envelope, tenant]() -> std::pair<absl::Status, std::string> {
      absl::MutexLock lock(&pending->mu);
      if (!pending->result.ok()) return {tenant->Rename(pending->result.status()), ""};
      const std::string prefix = c.echo ? c.prompt_text : "";
      const std::vector<core::TokenEvent> events(pending->events.begin(), pending->events.end());
      Json logprobs = c.logprobs >= 0 ? LogprobsOf(events, prefix.size(), *engine) : Json(nullptr);
      Json out = envelope(Json::array(
          {choice(prefix + pending->result->text, logprobs, FinishReasonOf(pending->result->finish_reason))}));
      out["usage"] = UsageOf(pending->stats);
      return {absl::OkStatus(), out.dump() + "\n"};
    };
    bool done;
    {
      absl::MutexLock lock(&pending->mu);
      done = pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), heartbeat_);
    }
    if (done) {
      auto [status, text] = answer();
      if (!status.ok()) return fail(status, "", c.model);
      return finish(HttpEndpoint::Reply(200, std::move(text), "application/json"), absl::StatusCode::kOk, c.model);
    }
    // Still running: 200 now, a space per heartbeat (a write to a client that has gone fails, and
    // the request is cancelled), then the body.
    Response r;
    r.content_type = "application/json";
    std::shared_ptr<core::RequestHandle> h = *handle;
    r.stream = [pending, h, answer, heartbeat = heartbeat_](const HttpEndpoint::Writer& write) {
      for (;;) {
        {
          absl::MutexLock lock(&pending->mu);
          if (pending->mu.AwaitWithTimeout(absl::Condition(&pending->done), heartbeat)) break;
        }
        if (!write(" ")) {
          h->Cancel();  // the client has gone
          return;
        }
      }
      auto [status, text] = answer();
      write(status.ok() ? text : ErrorOf(status).body);
    };
    return finish(std::move(r), absl::StatusCode::kOk, c.model);
  }

  Response r;
  r.content_type = "text/event-stream";
  r.headers["Cache-Control"] = "no-cache";
  std::shared_ptr<core::RequestHandle> h = *handle;
  r.stream = [pending, h, engine, c, choice, envelope, has_event_or_done, tenant](const HttpEndpoint::Writer& write) {
    bool open = true;
    size_t offset = 0;
    if (c.echo && !c.prompt_text.empty()) {
      open = write(Sse(envelope(Json::array({choice(c.prompt_text, c.logprobs >= 0 ? LogprobsOf({}, 0, *engine) : Json(nullptr),
                                                         nullptr)}))));
      offset = c.prompt_text.size();
    }
    while (open) {
      std::vector<core::TokenEvent> batch;
      bool done;
      {
        absl::MutexLock lock(&pending->mu);
        pending->mu.Await(absl::Condition(&has_event_or_done));
        batch.assign(pending->events.begin(), pending->events.end());
        pending->events.clear();
        done = pending->done;
      }
      for (const core::TokenEvent& e : batch) {
        if (e.text.empty() && c.logprobs < 0) continue;
        Json logprobs = c.logprobs >= 0 ? LogprobsOf({e}, offset, *engine) : Json(nullptr);
        offset += e.text.size();
        if (!(open = write(Sse(envelope(Json::array({choice(e.text, logprobs, nullptr)})))))) break;
      }
      if (!open || done) break;
    }
    if (!open) {
      h->Cancel();  // the client has gone
      return;
    }
    absl::StatusOr<core::GenerationResult> result = absl::UnknownError("");
    core::RequestStats stats;
    {
      absl::MutexLock lock(&pending->mu);
      result = pending->result;
      stats = pending->stats;
    }
    if (result.ok()) {
      Json last = envelope(Json::array({choice("", nullptr, FinishReasonOf(result->finish_reason))}));
      if (!write(Sse(last))) return;
      if (c.include_usage) {
        Json usage = envelope(Json::array());
        usage["usage"] = UsageOf(stats);
        if (!write(Sse(usage))) return;
      }
    } else {
      Response e = ErrorOf(tenant->Rename(result.status()));
      if (!write(absl::StrCat("data: ", e.body, "\n"))) return;
    }
    write("data: [DONE]\n\n");
  };
  return finish(std::move(r), absl::StatusCode::kOk, c.model);
}

namespace {

// The admitted engine and the body of a vLLM adapter request ({"lora_name", ...}), or the error.
struct AdapterCall {
  explicit AdapterCall(ServiceEnv* env) : tenant(env) {}
  TenantCall tenant;
  std::shared_ptr<core::Engine> engine;
  Json body;
  std::string name;  // the engine's
  std::string given;  // as the caller wrote it
};
// `access`: what the call does to the adapter (both need the operator role).
absl::Status AdmitAdapterCall(AdapterCall& call, ServiceEnv& env, const Request& request, Access access,
                              std::string* param) {
  LORASERVE_RETURN_IF_ERROR(Authenticate(call.tenant, request));
  LORASERVE_ASSIGN_OR_RETURN(call.engine, env.engine.ForNewCall());
  LORASERVE_RETURN_IF_ERROR(RequireRole(call.tenant.caller(), Role::kOperator,
                                        access == Access::kCreate ? "load_lora_adapter" : "unload_lora_adapter"));
  call.body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (call.body.is_discarded() || !call.body.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  if (!call.body.contains("lora_name") || !call.body["lora_name"].is_string()) {
    *param = "lora_name";
    return absl::InvalidArgumentError("'lora_name' is required: a string");
  }
  call.given = call.body["lora_name"].get<std::string>();
  absl::StatusOr<std::string> name = call.tenant.Resolve(call.given, access, "lora_name");
  if (!name.ok()) {
    *param = "lora_name";
    return name.status();
  }
  call.name = *std::move(name);
  return absl::OkStatus();
}

// The audit record and the tenant's request metric of a vLLM adapter call.
void RecordAdapterCall(ServiceEnv& env, const char* call, const Request& request, const AdapterCall& c,
                       const absl::Status& status) {
  if (c.tenant.authenticated()) env.metrics->RecordTenantRequest(c.tenant.caller().tenant->id, status.code());
  if (env.audit == nullptr) return;
  AuditRecord r;
  r.via = "http";
  r.call = call;
  r.request_id = request.header(kRequestIdKey);
  if (c.tenant.authenticated()) {
    r.tenant = c.tenant.caller().tenant->id;
    r.role = RoleName(c.tenant.caller().role());
  }
  r.adapter = c.name;
  r.code = absl::StatusCodeToString(status.code());
  r.message = std::string(status.message());
  env.audit->Record(r);
}

}  // namespace

HttpEndpoint::Response OpenAiApi::LoadLora(const Request& request) {
  const absl::Time start = absl::Now();
  std::string param;
  AdapterCall call(env_);
  absl::StatusOr<RootLoadResult> result = [&]() -> absl::StatusOr<RootLoadResult> {
    LORASERVE_RETURN_IF_ERROR(AdmitAdapterCall(call, *env_, request, Access::kCreate, &param));
    if (!call.body.contains("lora_path") || !call.body["lora_path"].is_string()) {
      param = "lora_path";
      return absl::InvalidArgumentError("'lora_path' is required: a string");
    }
    std::string path = call.body["lora_path"].get<std::string>();
    if (!path.empty() && path.front() == '/' && !call.tenant.caller().adapter_root.empty()) {
      std::optional<std::string> relative = RelativeTo(path, call.tenant.caller().adapter_root);
      if (!relative.has_value()) {
        param = "lora_path";
        return absl::InvalidArgumentError(
            absl::StrCat("lora_path \"", path, "\" is not under the server's adapter root"));
      }
      path = *relative;
    }
    LORASERVE_ASSIGN_OR_RETURN(RootLoad load, BeginRootLoad(*env_, *call.engine, call.tenant, call.name, path));
    return FinishRootLoad(*env_, *call.engine, call.tenant, load);
  }();
  env_->metrics->RecordRpc("OpenAI.LoadLoraAdapter", result.status().code(), absl::Now() - start);
  RecordAdapterCall(*env_, "load_lora_adapter", request, call, call.tenant.Rename(result.status()));
  if (!result.ok()) {
    Response r = ErrorOf(call.tenant.Rename(result.status()), param);
    if (result.status().code() == absl::StatusCode::kResourceExhausted) r.headers[kRetryAfterKey] = std::to_string(absl::ToInt64Milliseconds(kAdapterQuotaRetryAfter));
    return r;
  }
  if (!result->already_loaded) env_->logger.Log(absl::StrCat("event=adapter_loaded via=http ", result->event));
  const std::string& name = result->adapter.name();
  return HttpEndpoint::Reply(200, result->already_loaded
                                      ? absl::StrCat("Success: LoRA adapter '", name, "' is already loaded.")
                                      : absl::StrCat("Success: LoRA adapter '", name, "' added successfully."));
}

HttpEndpoint::Response OpenAiApi::UnloadLora(const Request& request) {
  const absl::Time start = absl::Now();
  std::string param;
  AdapterCall call(env_);
  absl::Status s = [&]() -> absl::Status {
    LORASERVE_RETURN_IF_ERROR(AdmitAdapterCall(call, *env_, request, Access::kManage, &param));
    return DeleteAdapterNamed(*env_, *call.engine, call.name);
  }();
  env_->metrics->RecordRpc("OpenAI.UnloadLoraAdapter", s.code(), absl::Now() - start);
  RecordAdapterCall(*env_, "unload_lora_adapter", request, call, call.tenant.Rename(s));
  if (!s.ok()) return ErrorOf(call.tenant.Rename(s), param);
  env_->logger.Log(absl::StrCat("event=adapter_deleted via=http name=", call.name));
  return HttpEndpoint::Reply(200, absl::StrCat("Success: LoRA adapter '", call.given, "' removed successfully."));
}

}  // namespace loraserve::server
