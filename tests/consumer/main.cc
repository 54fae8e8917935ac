// An external program using the installed client library: `loraserve_consumer HOST:PORT`.
// Checks health, tokenizes, generates a few greedy tokens with the base model, lists adapters and
// reads the request id of a failed call; prints what it got and exits non-zero on any error.
#include <loraserve/client.h>

#include <cstdio>
#include <string>

namespace {

int Fail(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "FAIL %s: %s\n", what, status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
    return 2;
  }
  loraserve::ClientOptions options;
  options.address = argv[1];
  options.default_deadline = absl::Seconds(30);
  auto client = loraserve::Client::Create(options);
  if (!client.ok()) return Fail("Create", client.status());

  auto health = (*client)->Health();
  if (!health.ok()) return Fail("Health", health.status());
  std::printf("health: %s\n", loraserve::ServingStatusName(*health));
  if (*health != loraserve::ServingStatus::kServing) {
    return Fail("Health", absl::FailedPreconditionError("not serving"));
  }

  auto ids = (*client)->Tokenize("Hello world", /*add_special_tokens=*/true);
  if (!ids.ok()) return Fail("Tokenize", ids.status());
  if (ids->empty()) return Fail("Tokenize", absl::InternalError("no tokens"));
  std::printf("tokenize: %zu tokens\n", ids->size());

  constexpr int kNewTokens = 4;
  loraserve::GenerateRequest request;
  request.token_ids = *ids;
  request.sampling.temperature = 0;  // greedy
  request.sampling.max_new_tokens = kNewTokens;
  request.sampling.ignore_eos = true;
  int streamed = 0;
  auto result = (*client)->Generate(request, [&streamed](const loraserve::GeneratedToken&) {
    ++streamed;
    return true;
  });
  if (!result.ok()) return Fail("Generate", result.status());
  std::printf("generate: %zu tokens (%d streamed), finish=%s, prompt_tokens=%lld\n",
              result->tokens.size(), streamed, loraserve::FinishReasonName(result->finish_reason),
              static_cast<long long>(result->prompt_tokens));
  if (static_cast<int>(result->tokens.size()) != kNewTokens || streamed != kNewTokens ||
      result->finish_reason != loraserve::FinishReason::kLength ||
      result->prompt_tokens != static_cast<int64_t>(ids->size())) {
    return Fail("Generate", absl::InternalError("unexpected result"));
  }

  auto adapters = (*client)->ListAdapters();
  if (!adapters.ok()) return Fail("ListAdapters", adapters.status());
  std::printf("adapters: %zu\n", adapters->size());

  // A failed call: the status code and the request-id payload cross the library boundary.
  auto missing = (*client)->GetAdapter("no-such-adapter");
  if (missing.ok() || !absl::IsNotFound(missing.status()) ||
      loraserve::RequestIdOf(missing.status()).empty()) {
    return Fail("GetAdapter(no-such-adapter)", missing.status());
  }
  std::printf("missing adapter: NOT_FOUND, request id %s\n",
              loraserve::RequestIdOf(missing.status()).c_str());
  std::printf("consumer OK\n");
  return 0;
}
