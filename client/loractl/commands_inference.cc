// loractl generate, score, tokenize, detokenize.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/loractl/commands.h"
#include "client/loractl/flags.h"

namespace loraserve::loractl {
namespace {

// Token ids from arguments like "1,2,3", "1 2 3" or several such arguments.
absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::vector<std::string>& parts) {
  std::vector<int32_t> ids;
  for (const auto& part : parts) {
    for (absl::string_view piece :
         absl::StrSplit(part, absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(piece, &id) || id < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad token id \"", piece, "\""));
      }
      ids.push_back(id);
    }
  }
  if (ids.empty()) return absl::InvalidArgumentError("no token ids given");
  return ids;
}

// All of stdin when `text` is "-".
std::string TextOrStdin(std::string text) {
  if (text == "-")
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  return text;
}

// The prompt of generate / score as given: TEXT or --token_ids.
struct PromptArgs {
  std::optional<std::string> text;
  std::vector<std::string> token_ids;
};

// Adds [TEXT], --adapter and --token_ids.
void AddPromptFlags(CLI::App* cmd, PromptArgs* prompt, std::string* adapter) {
  cmd->add_option_function<std::string>(
      "TEXT", [prompt](const std::string& text) { prompt->text = text; },
      "the prompt (\"-\" = stdin)");
  AddString(cmd, {"adapter", "NAME", "adapter to apply (default: the base model)"}, adapter);
  AddList(cmd,
          {"token_ids", "IDS", "the prompt as token ids (\"1,2,3\" or \"1 2 3\") instead of TEXT"},
          &prompt->token_ids);
}

void AddTopLogprobs(CLI::App* cmd, int32_t* top_logprobs) {
  AddInt(cmd, {"top_logprobs", "K", "also the K most likely tokens at each position, 0 to 20"},
         top_logprobs, 0, 20);
}

// The prompt as text (TEXT, "-" = stdin) or as ids (--token_ids);
// InvalidArgument with a usage message when it is missing, given twice or bad.
absl::Status ReadPrompt(const PromptArgs& prompt, std::string* text, std::vector<int32_t>* ids) {
  const bool has_ids = !prompt.token_ids.empty();
  if (has_ids && prompt.text) {
    return absl::InvalidArgumentError("give the prompt as TEXT or with --token_ids, not both");
  }
  if (!has_ids && !prompt.text) {
    return absl::InvalidArgumentError("needs the prompt: a TEXT argument or --token_ids");
  }
  if (has_ids) {
    absl::StatusOr<std::vector<int32_t>> parsed = ParseTokenIds(prompt.token_ids);
    if (!parsed.ok())
      return absl::InvalidArgumentError(absl::StrCat("--token_ids: ", parsed.status().message()));
    *ids = *std::move(parsed);
    return absl::OkStatus();
  }
  *text = TextOrStdin(*prompt.text);
  return absl::OkStatus();
}

// "ID "TEXT" LOGPROB, ..." for a table cell.
std::string TopCell(const std::vector<loraserve::TokenLogprob>& top,
                    const std::map<int32_t, std::string>& texts) {
  std::vector<std::string> parts;
  for (const auto& e : top) {
    parts.push_back(absl::StrCat(e.id, " ", TextOf(texts, e.id), " ", FormatFloat(e.logprob)));
  }
  return absl::StrJoin(parts, ", ");
}

// ---- generate
// ---------------------------------------------------------------------------------

struct GenerateArgs {
  PromptArgs prompt;
  loraserve::GenerateRequest req;
  bool no_echo = false;
};

Json GeneratedTokenJson(const loraserve::GeneratedToken& t, bool logprobs) {
  Json j = {{"id", t.id}, {"index", t.index}, {"text", t.text}};
  if (logprobs) {
    j["logprob"] = t.logprob;
    Json top = Json::array();
    for (const auto& e : t.top_logprobs) top.push_back({{"id", e.id}, {"logprob", e.logprob}});
    j["top_logprobs"] = top;
  }
  return j;
}

void PrintGeneratedLogprobs(Context& ctx, const loraserve::GenerateResult& r) {
  std::set<int32_t> ids;
  for (const auto& t : r.tokens) {
    ids.insert(t.id);
    for (const auto& e : t.top_logprobs) ids.insert(e.id);
  }
  const std::map<int32_t, std::string> texts = ctx.TokenTexts(ids);
  std::vector<std::vector<std::string>> rows = {{"INDEX", "ID", "TOKEN", "LOGPROB", "TOP"}};
  for (const auto& t : r.tokens) {
    rows.push_back({absl::StrCat(t.index), absl::StrCat(t.id), TextOf(texts, t.id),
                    FormatFloat(t.logprob), TopCell(t.top_logprobs, texts)});
  }
  PrintTable(rows, {0, 1, 3});
}

int RunGenerate(Context& ctx, GenerateArgs& args) {
  loraserve::GenerateRequest& req = args.req;
  absl::Status prompt = ReadPrompt(args.prompt, &req.text, &req.token_ids);
  if (!prompt.ok()) return ctx.Usage(std::string(prompt.message()));
  loraserve::SamplingParams& sp = req.sampling;
  sp.logprobs = sp.logprobs || sp.top_logprobs > 0;

  // Human output streams the text as it comes: the prompt (unless --no_echo),
  // then each token. The prompt is echoed once the first token arrived, so a
  // call failing at once prints nothing.
  const bool stream_text = !ctx.json();
  bool started = false;
  auto start_output = [&] {
    if (started || !stream_text) return;
    started = true;
    if (!req.text.empty() && !args.no_echo) std::fputs(req.text.c_str(), stdout);
  };
  std::unique_ptr<loraserve::GenerateStream> stream = ctx.client().StartGenerate(req, ctx.call());
  loraserve::GeneratedToken token;
  while (stream->Next(&token)) {
    start_output();
    if (stream_text) {
      std::fputs(token.text.c_str(), stdout);
      std::fflush(stdout);
    }
  }
  absl::StatusOr<loraserve::GenerateResult> r = stream->Finish();
  if (r.ok()) start_output();
  if (started) {
    std::printf("\n");
    std::fflush(stdout);
  }
  if (!r.ok()) return ctx.Fail(r.status());
  if (ctx.json()) {
    Json tokens = Json::array();
    for (const auto& t : r->tokens) tokens.push_back(GeneratedTokenJson(t, sp.logprobs));
    ctx.Emit({{"adapter", req.adapter},
              {"text", r->text},
              {"tokens", tokens},
              {"finish_reason", loraserve::FinishReasonName(r->finish_reason)},
              {"stop_string", r->stop_string},
              {"prompt_tokens", r->prompt_tokens},
              {"completion_tokens", r->completion_tokens},
              {"seed", r->seed},
              {"queue_time_ms", r->queue_time_ms},
              {"time_to_first_token_ms", r->time_to_first_token_ms}});
    return 0;
  }
  if (sp.logprobs) PrintGeneratedLogprobs(ctx, *r);
  if (!ctx.quiet()) {
    std::fprintf(stderr,
                 "[%" PRId64 " prompt + %" PRId64 " new tokens, finish: %s%s%s, seed %" PRIu64
                 ", queued %.1f ms, first token after %.1f ms]\n",
                 r->prompt_tokens, r->completion_tokens,
                 loraserve::FinishReasonName(r->finish_reason),
                 r->stop_string.empty() ? "" : " at ",
                 r->stop_string.empty() ? "" : Quote(r->stop_string).c_str(), r->seed,
                 r->queue_time_ms, r->time_to_first_token_ms);
  }
  return 0;
}

void AddGenerate(CLI::App* root, CommandTable* table) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd =
      table->Add(root, "generate", "stream a continuation of TEXT (\"-\" = stdin) to stdout",
                 "The prompt is echoed, then tokens are printed as they "
                 "arrive; a summary (token counts,\n"
                 "finish reason, seed, latency) goes to stderr. With "
                 "--logprobs a per-token table follows.",
                 [args](Context& ctx) { return RunGenerate(ctx, *args); });
  loraserve::SamplingParams& sp = args->req.sampling;
  constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
  AddPromptFlags(cmd, &args->prompt, &args->req.adapter);
  AddInt(cmd, {"max_new_tokens", "N", "upper bound on new tokens (default 128)"},
         &sp.max_new_tokens, 0, kMaxInt32);
  AddDouble(cmd, {"temperature", "T", "0 = greedy (default 1)"}, &sp.temperature);
  AddInt(cmd, {"top_k", "K", "sample from the K most likely tokens (default 0 = off)"}, &sp.top_k,
         0, kMaxInt32);
  AddDouble(cmd, {"top_p", "P", "nucleus sampling, in (0, 1] (default 1 = off)"}, &sp.top_p);
  AddUint64(cmd, {"seed", "S", "sampling seed (default: drawn by the server, reported)"}, &sp.seed);
  AddList(cmd, {"stop", "TEXT", "stop when the text contains TEXT"}, &sp.stop);
  AddFlag(cmd, "ignore_eos", &sp.ignore_eos, "keep going past end-of-sequence tokens");
  AddFlag(cmd, "logprobs", &sp.logprobs, "log-probability of each new token");
  AddTopLogprobs(cmd, &sp.top_logprobs);
  AddFlag(cmd, "no_echo", &args->no_echo, "do not print the prompt before the continuation");
}

// ---- score
// ------------------------------------------------------------------------------------

struct ScoreArgs {
  PromptArgs prompt;
  loraserve::ScoreRequest req;
  bool no_special_tokens = false;
};

int RunScore(Context& ctx, ScoreArgs& args) {
  loraserve::ScoreRequest& req = args.req;
  std::string text;
  absl::Status prompt = ReadPrompt(args.prompt, &text, &req.token_ids);
  if (!prompt.ok()) return ctx.Usage(std::string(prompt.message()));
  if (req.token_ids.empty()) {
    auto ids = ctx.client().Tokenize(text, !args.no_special_tokens, false, ctx.call());
    if (!ids.ok()) return ctx.Fail(ids.status());
    req.token_ids = *std::move(ids);
  }
  auto r = ctx.client().Score(req, ctx.call());
  if (!r.ok()) return ctx.Fail(r.status());

  std::set<int32_t> ids(req.token_ids.begin(), req.token_ids.end());
  for (const auto& row : r->top_logprobs) {
    for (const auto& e : row) ids.insert(e.id);
  }
  const std::map<int32_t, std::string> texts = ctx.TokenTexts(ids);
  double total = 0;
  for (float lp : r->token_logprobs) total += lp;
  const size_t scored = r->token_logprobs.size();
  if (ctx.json()) {
    Json tokens = Json::array();
    for (int32_t id : req.token_ids)
      tokens.push_back(texts.count(id) ? Json(texts.at(id)) : Json(nullptr));
    Json top = Json::array();
    for (const auto& row : r->top_logprobs) {
      Json list = Json::array();
      for (const auto& t : row) {
        Json e = {{"id", t.id}, {"logprob", t.logprob}};
        if (auto it = texts.find(t.id); it != texts.end()) e["text"] = it->second;
        list.push_back(std::move(e));
      }
      top.push_back(std::move(list));
    }
    Json doc = {{"adapter", req.adapter},
                {"num_tokens", r->num_tokens},
                {"vocab_size", r->vocab_size},
                {"token_ids", req.token_ids},
                {"tokens", tokens},
                {"token_logprobs", r->token_logprobs},
                {"top_logprobs", top},
                {"total_logprob", total}};
    if (req.full_logits) {
      Json logits = Json::array();  // [num_tokens][vocab_size]
      for (int64_t t = 0; t < r->num_tokens; ++t) {
        const auto row = r->logits.begin() + t * r->vocab_size;
        logits.push_back(std::vector<float>(row, row + r->vocab_size));
      }
      doc["logits"] = std::move(logits);
    }
    ctx.Emit(doc);
    return 0;
  }
  // Row t: token t, log p(token t | tokens before it), and (with
  // --top_logprobs) what the model predicted for position t.
  const bool with_top = !r->top_logprobs.empty();
  std::vector<std::vector<std::string>> rows = {{"POS", "ID", "TOKEN", "LOGPROB"}};
  if (with_top) rows[0].push_back("TOP PREDICTIONS");
  for (size_t t = 0; t < req.token_ids.size(); ++t) {
    rows.push_back({absl::StrCat(t), absl::StrCat(req.token_ids[t]),
                    TextOf(texts, req.token_ids[t]),
                    t == 0 ? "-" : FormatFloat(r->token_logprobs[t - 1])});
    if (with_top) rows.back().push_back(t == 0 ? "" : TopCell(r->top_logprobs[t - 1], texts));
  }
  PrintTable(rows, {0, 1, 3});
  if (with_top) std::printf("next: %s\n", TopCell(r->top_logprobs.back(), texts).c_str());
  if (req.full_logits) {
    std::printf("full logits: %lld x %lld floats received (--json prints them)\n",
                static_cast<long long>(r->num_tokens), static_cast<long long>(r->vocab_size));
  }
  std::printf("total logprob %.4f over %zu tokens", total, scored);
  if (scored > 0) std::printf(", perplexity %.4g", std::exp(-total / static_cast<double>(scored)));
  std::printf("\n");
  return 0;
}

void AddScore(CLI::App* root, CommandTable* table) {
  auto args = std::make_shared<ScoreArgs>();
  CLI::App* cmd =
      table->Add(root, "score", "log-probability of each token given the ones before it",
                 "TEXT is tokenized by the server (with BOS unless --no_special_tokens).",
                 [args](Context& ctx) { return RunScore(ctx, *args); });
  AddPromptFlags(cmd, &args->prompt, &args->req.adapter);
  AddTopLogprobs(cmd, &args->req.top_logprobs);
  AddFlag(cmd, "full_logits", &args->req.full_logits,
          "also fetch every position's logits (--json: \"logits\", num_tokens "
          "x vocab_size)");
  AddFlag(cmd, "no_special_tokens", &args->no_special_tokens,
          "tokenize TEXT without special tokens");
}

// ---- tokenize, detokenize
// ---------------------------------------------------------------------

struct TokenizeArgs {
  std::string text;
  bool no_special_tokens = false;
  bool parse_special = false;
};

int RunTokenize(Context& ctx, const TokenizeArgs& args) {
  auto ids = ctx.client().Tokenize(TextOrStdin(args.text), !args.no_special_tokens,
                                   args.parse_special, ctx.call());
  if (!ids.ok()) return ctx.Fail(ids.status());
  if (ctx.json()) {
    ctx.Emit({{"token_ids", *ids}, {"count", ids->size()}});
  } else {
    std::printf("%s\n", absl::StrJoin(*ids, " ").c_str());
  }
  return 0;
}

struct DetokenizeArgs {
  std::vector<std::string> ids;
  bool skip_special_tokens = false;
};

int RunDetokenize(Context& ctx, const DetokenizeArgs& args) {
  absl::StatusOr<std::vector<int32_t>> ids = ParseTokenIds(args.ids);
  if (!ids.ok()) return ctx.Usage(std::string(ids.status().message()));
  auto text = ctx.client().Detokenize(*ids, args.skip_special_tokens, ctx.call());
  if (!text.ok()) return ctx.Fail(text.status());
  if (ctx.json()) {
    ctx.Emit({{"text", *text}});
  } else {
    std::printf("%s\n", text->c_str());
  }
  return 0;
}

void AddTokenize(CLI::App* root, CommandTable* table) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = table->Add(root, "tokenize", "token ids of TEXT (\"-\" = stdin), with BOS", "",
                             [args](Context& ctx) { return RunTokenize(ctx, *args); });
  cmd->add_option("TEXT", args->text, "the text (\"-\" = stdin)")->required();
  AddFlag(cmd, "no_special_tokens", &args->no_special_tokens, "do not add special tokens (BOS)");
  AddFlag(cmd, "parse_special", &args->parse_special,
          "turn special-token text such as </s> into those tokens");
}

void AddDetokenize(CLI::App* root, CommandTable* table) {
  auto args = std::make_shared<DetokenizeArgs>();
  CLI::App* cmd =
      table->Add(root, "detokenize", "text of token ids (\"1,2,3\" or separate arguments)", "",
                 [args](Context& ctx) { return RunDetokenize(ctx, *args); });
  cmd->add_option("ID", args->ids, "token ids")->required();
  AddFlag(cmd, "skip_special_tokens", &args->skip_special_tokens, "leave out special tokens");
}

}  // namespace

void AddInferenceCommands(CLI::App* root, CommandTable* table) {
  AddGenerate(root, table);
  AddScore(root, table);
  AddTokenize(root, table);
  AddDetokenize(root, table);
}

}  // namespace loraserve::loractl
