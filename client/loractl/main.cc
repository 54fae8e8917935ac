// loractl: the operator command line for a loraserve server, over the C++
// client library.
//
//   loractl [GLOBAL FLAGS] COMMAND [ARGS] [FLAGS]      (loractl --help, loractl
//   COMMAND --help)
//
// CLI11 parses the command line: the root app holds the global flags
// (context.cc), each subcommand its own flags and arguments (commands_*.cc),
// and the global flags may come before or after the command. This file turns
// what CLI11 found or rejected into loractl's usage errors and runs the
// command. Output: human-readable on stdout (progress bars and summaries on
// stderr), or with --json exactly one JSON document on stdout and errors as one
// JSON document on stderr. Exit code: 0 on success, the gRPC status code of the
// failed call otherwise (health NOT_SERVING: 14), 64 for usage errors (bad
// command line, unreadable --token_file / TLS files).
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/loractl/commands.h"
#include "client/loractl/context.h"
#include "client/loractl/help.h"
#include "client/loractl/replicas.h"

namespace loraserve::loractl {
namespace {

constexpr const char* kExitStatusHelp =
    "Any --tls_* file flag turns on --tls. Exit status: 0 on success, else the "
    "gRPC status\n"
    "code of the failed call (3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 "
    "ALREADY_EXISTS,\n"
    "9 FAILED_PRECONDITION, 14 UNAVAILABLE (also: health not SERVING), 16 "
    "UNAUTHENTICATED,\n"
    "...), 64 for a usage error.";

std::string HelpOf(const CLI::App* app) {
  return app->get_formatter()->make_help(app, app->get_name(), CLI::AppFormatMode::Normal);
}

// The deepest subcommand chosen on the command line (the root when none was).
CLI::App* Chosen(CLI::App* root) {
  CLI::App* app = root;
  while (!app->get_subcommands().empty()) app = app->get_subcommands().front();
  return app;
}

// --help or -h given to `app` or one of its parents.
bool HelpRequested(const CLI::App* app) {
  for (; app != nullptr; app = app->get_parent()) {
    if (app->get_help_ptr() != nullptr && app->get_help_ptr()->count() > 0) return true;
  }
  return false;
}

// --json given (and not =false); read from the parse results, since a parse
// error may come before the flag's callback ran.
bool JsonRequested(const CLI::App& root) {
  const CLI::Option* json = root.get_option("--json");
  return json->count() > 0 && json->results().back() == "true";
}

// An argument CLI11 could not place that looks like a flag ("-5" and "-0.5" are
// numbers).
bool IsFlag(const std::string& arg) {
  double unused;
  return arg.size() > 1 && arg[0] == '-' && !absl::SimpleAtod(arg, &unused);
}

// The name of an unknown flag for its error message: "--name" without "=VALUE".
std::string FlagName(const std::string& arg) {
  return arg.rfind("--", 0) == 0 ? arg.substr(0, arg.find('=')) : arg;
}

// The subcommand `word` of `app` listed in help, or nullptr.
const CLI::App* FindSubcommand(const CLI::App* app, const std::string& word) {
  for (const CLI::App* sub : app->get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->get_name() == word && !sub->get_group().empty()) return sub;
  }
  return nullptr;
}

// loractl help [COMMAND...]: the help of the command the words name.
int RunHelp(const CLI::App& root, const CommandTable& table, const std::vector<std::string>& words,
            bool json) {
  const CLI::App* target = &root;
  for (const std::string& word : words) {
    if (table.Find(target) != nullptr) break;  // a command: later words do not matter
    const CLI::App* sub = FindSubcommand(target, word);
    if (sub == nullptr) {
      const std::string group = CommandName(target);
      return UsageError(
          json, absl::StrCat("unknown command \"", group, group.empty() ? "" : " ", word, "\""));
    }
    target = sub;
  }
  std::fputs(HelpOf(target).c_str(), stdout);
  return 0;
}

// What CLI11 rejected, as a usage message for `command`.
std::string ParseErrorMessage(const CLI::ParseError& e, const CLI::App* command,
                              const std::vector<std::string>& args) {
  // The arguments ran out after a flag that takes a value.
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr && !args.empty()) {
    const std::string flag = args.back().substr(0, args.back().find('='));
    for (const CLI::App* app = command; app != nullptr; app = app->get_parent()) {
      if (const CLI::Option* opt = app->get_option_no_throw(flag); opt != nullptr) {
        return absl::StrCat(flag, " needs a value (", opt->get_type_name(), ")");
      }
    }
  }
  return e.what();
}

// Commands --all refuses: inference is routed to one replica, not broadcast, and these
// read stdin or write local files that a second replica would read or overwrite again.
bool RunsOnAll(const std::string& name) {
  static const char* const kNotOnAll[] = {"generate", "score", "tokenize", "detokenize",
                                          "adapters save", "adapters export", "metrics"};
  for (const char* n : kNotOnAll) {
    if (name == n) return false;
  }
  return true;
}

// --all: the command once per replica, in address order. Human output: a "== ADDR ==" line
// before each replica's; --json: one document {"replicas": [{"addr", "result" | "error",
// "exit_code"}], "failed": N}. Exit status: 0 when every replica succeeded, else the first
// failure's.
int RunOnAll(const Command& command, const std::string& name, const GlobalFlags& flags) {
  absl::StatusOr<Replicas> replicas = ResolveReplicas(flags.client.address);
  if (!replicas.ok()) {
    if (replicas.status().code() == absl::StatusCode::kInvalidArgument) {
      return Context(name, flags).Usage(std::string(replicas.status().message()));
    }
    return Context(name, flags).Fail(replicas.status());
  }
  const bool tls = flags.client.tls.enabled || flags.tls_ca_file || flags.tls_cert_file;
  Json doc = {{"replicas", Json::array()}};
  int first_failure = 0;
  int failed = 0;
  for (const std::string& address : replicas->addresses) {
    GlobalFlags one = flags;
    one.client.address = address;
    // The certificate names the Service, not the pod's address.
    if (tls && !replicas->host.empty() && !one.tls_server_name) one.tls_server_name = replicas->host;
    Json entry = {{"addr", address}};
    Context ctx(name, one);
    ctx.set_replica(address, flags.json ? &entry : nullptr);
    if (!flags.json) {
      std::printf("== %s ==\n", address.c_str());
      std::fflush(stdout);
    }
    int rc = ctx.Connect();
    if (rc == 0) rc = command.run(ctx);
    std::fflush(stdout);
    entry["exit_code"] = rc;
    if (rc != 0) {
      ++failed;
      if (first_failure == 0) first_failure = rc;
    }
    if (flags.json) doc["replicas"].push_back(std::move(entry));
  }
  if (flags.json) {
    doc["failed"] = failed;
    std::printf("%s\n", doc.dump(2, ' ', false, Json::error_handler_t::replace).c_str());
  } else if (!flags.quiet || failed > 0) {
    std::fprintf(stderr, "loractl: --all: %zu replica%s, %d failed\n", replicas->addresses.size(),
                 replicas->addresses.size() == 1 ? "" : "s", failed);
  }
  return first_failure;
}

int Main(int argc, char** argv) {
  CLI::App root("loractl: the operator command line for a loraserve server.", "loractl");
  root.footer(kExitStatusHelp);
  root.set_help_flag("-h,--help", "usage and flags (of the command before it, if any)");
  // Unknown flags and surplus arguments end up here and are reported below in
  // loractl's words.
  root.allow_extras();
  root.require_subcommand(0, 1);
  GlobalFlags flags;
  AddGlobalFlags(&root, &flags);
  CommandTable table;
  AddAdapterCommands(&root, &table);
  AddInferenceCommands(&root, &table);
  AddServerCommands(&root, &table);
  CLI::App* help = root.add_subcommand("help", "usage and flags of COMMAND");
  help->group("");  // not in the command lists; the main help's usage lines name it
  help->fallthrough();
  std::vector<std::string> help_words;
  help->add_option("COMMAND", help_words, "a command, e.g. adapters combine");
  UseLoractlHelp(&root);

  const std::vector<std::string> args(argv + 1, argv + argc);
  std::optional<std::string> parse_error;
  bool missing_argument = false;
  try {
    root.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    // Handled with HelpRequested below.
  } catch (const CLI::ParseError& e) {
    parse_error = ParseErrorMessage(e, Chosen(&root), args);
    missing_argument = dynamic_cast<const CLI::RequiredError*>(&e) != nullptr;
  }
  flags.json = JsonRequested(root);
  CLI::App* chosen = Chosen(&root);
  if (chosen == help) return RunHelp(root, table, help_words, flags.json);
  const Command* command = table.Find(chosen);
  const std::string name = CommandName(chosen);

  std::optional<std::string> unknown_flag, extra_argument;
  for (const std::string& arg : root.remaining()) {
    if (arg == "--") continue;
    if (IsFlag(arg)) {
      if (!unknown_flag) unknown_flag = FlagName(arg);
    } else if (!extra_argument) {
      extra_argument = arg;
    }
  }
  // A word that names no command: nothing to run, not even --help.
  if (command == nullptr && extra_argument) {
    return UsageError(flags.json, absl::StrCat("unknown command \"", name, name.empty() ? "" : " ",
                                               *extra_argument, "\""));
  }
  if (HelpRequested(chosen)) {
    std::fputs(HelpOf(chosen).c_str(), stdout);
    return 0;
  }
  if (command == nullptr && chosen != &root) {  // a group without its subcommand
    if (!flags.json) std::fputs(HelpOf(chosen).c_str(), stderr);
    return UsageError(flags.json, absl::StrCat(name, " needs a subcommand"));
  }
  Context ctx(name, flags);
  auto usage = [&](const std::string& message) {
    return command != nullptr ? ctx.Usage(message) : UsageError(flags.json, message);
  };
  if (unknown_flag) return usage(absl::StrCat("unknown flag ", *unknown_flag));
  if (command == nullptr) {
    if (parse_error) return usage(*parse_error);
    std::fputs(HelpOf(&root).c_str(), stderr);
    return kUsageError;
  }
  if (missing_argument || extra_argument) {
    const std::string synopsis = Synopsis(chosen);
    return usage(absl::StrCat("usage: loractl ", name, synopsis.empty() ? "" : " ", synopsis));
  }
  if (parse_error) return usage(*parse_error);
  if (flags.all) {
    if (!command->needs_client || !RunsOnAll(name)) {
      return usage(absl::StrCat("--all is for management and health commands, not ", name));
    }
    return RunOnAll(*command, name, flags);
  }
  if (command->needs_client) {
    if (const int rc = ctx.Connect(); rc != 0) return rc;
  }
  return command->run(ctx);
}

}  // namespace
}  // namespace loraserve::loractl

int main(int argc, char** argv) {
  // gRPC core logs connection failures (e.g. a TLS handshake) on stderr; the
  // failed call's status already says it. GRPC_VERBOSITY set by the caller
  // still wins.
  setenv("GRPC_VERBOSITY", "NONE", /*overwrite=*/0);
  return loraserve::loractl::Main(argc, argv);
}
