// loractl's --help texts, made from the CLI11 app tree: the main help (every
// command and the global flags), a group's (its subcommands) and a command's
// (usage, details, arguments, flags).
#ifndef CLIENT_LORACTL_HELP_H_
#define CLIENT_LORACTL_HELP_H_

#include <string>

namespace CLI {
class App;
}  // namespace CLI

namespace loraserve::loractl {

// Makes `root` and every subcommand below it print loractl's help. Subcommands
// whose group is "" are left out of the command lists. The root's description
// heads the main help and its footer ends it; a command's description is its
// summary line and its footer the details of its help.
void UseLoractlHelp(CLI::App* root);

// The positional arguments of `command` as in its usage line: "NAME DIR",
// "[TEXT]", "ID...", "NAME SOURCE[:WEIGHT]..." (an argument's option_text
// follows its name).
std::string Synopsis(const CLI::App* command);

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_HELP_H_
