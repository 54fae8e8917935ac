// loractl's subcommands: each is a CLI11 app (its flags and positional
// arguments bound to the values its run function reads) plus that function,
// kept in a CommandTable. main.cc parses the command line and runs the command
// that was chosen.
#ifndef CLIENT_LORACTL_COMMANDS_H_
#define CLIENT_LORACTL_COMMANDS_H_

#include <functional>
#include <string>
#include <vector>

#include "client/loractl/context.h"

namespace CLI {
class App;
}  // namespace CLI

namespace loraserve::loractl {

// Runs a parsed command; returns the exit code.
using RunCommand = std::function<int(Context& ctx)>;

struct Command {
  CLI::App* app;
  RunCommand run;
  bool needs_client;  // false: no gRPC client is made (metrics is plain HTTP)
};

// The runnable subcommands. Not thread-safe.
class CommandTable {
 public:
  // Adds the subcommand `name` under `parent` (the root or a group): `summary`
  // is its line in the command lists, `details` more for its --help ("" =
  // none). Its flags and positional arguments go on the app returned.
  CLI::App* Add(CLI::App* parent, const std::string& name, const std::string& summary,
                const std::string& details, RunCommand run, bool needs_client = true);
  // The command whose app is `app`; nullptr for the root and for groups.
  const Command* Find(const CLI::App* app) const;

 private:
  std::vector<Command> commands_;
};

// Adds a group of subcommands ("adapters") under `parent`.
CLI::App* AddGroup(CLI::App* parent, const std::string& name, const std::string& summary);

// "adapters list": the names from the root (excluded) down to `app`.
std::string CommandName(const CLI::App* app);

// The command groups, one file each.
void AddAdapterCommands(CLI::App* root,
                        CommandTable* table);  // commands_adapters.cc
void AddInferenceCommands(CLI::App* root,
                          CommandTable* table);  // commands_inference.cc
void AddServerCommands(CLI::App* root,
                       CommandTable* table);  // commands_server.cc

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_COMMANDS_H_
