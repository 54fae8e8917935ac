#include "client/loractl/help.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/loractl/commands.h"

namespace loraserve::loractl {
namespace {

using Rows = std::vector<std::pair<std::string, std::string>>;

// "  LEFT  RIGHT" lines with LEFT padded to the widest; a RIGHT of several
// lines continues under its first.
std::string Columns(const Rows& rows) {
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  const std::string indent = "\n" + std::string(width + 4, ' ');
  std::string out;
  for (const auto& [left, right] : rows) {
    absl::StrAppend(&out, "  ", left, std::string(width - left.size(), ' '), "  ",
                    absl::StrReplaceAll(right, {{"\n", indent}}), "\n");
  }
  return out;
}

// The subcommands listed in help (not the hidden ones), in the order they were
// added.
std::vector<const CLI::App*> Listed(const CLI::App* app) {
  return app->get_subcommands([](const CLI::App* sub) { return !sub->get_group().empty(); });
}

// The rows of the runnable commands at and below `app`: full name and
// arguments, summary.
void AddCommandRows(const CLI::App* app, Rows* rows) {
  const std::vector<const CLI::App*> subs = Listed(app);
  if (subs.empty()) {
    const std::string synopsis = Synopsis(app);
    rows->emplace_back(absl::StrCat(CommandName(app), synopsis.empty() ? "" : " ", synopsis),
                       app->get_description());
  }
  for (const CLI::App* sub : subs) AddCommandRows(sub, rows);
}

// The flags of `app` (not --help).
std::vector<const CLI::Option*> Flags(const CLI::App* app) {
  return app->get_options(
      [app](const CLI::Option* opt) { return opt->nonpositional() && opt != app->get_help_ptr(); });
}

std::string FlagColumns(const CLI::App* app) {
  Rows rows;
  for (const CLI::Option* opt : Flags(app)) {
    std::string left = opt->get_name();
    if (opt->get_expected_max() > 0) absl::StrAppend(&left, " ", opt->get_type_name());
    if (opt->get_multi_option_policy() == CLI::MultiOptionPolicy::TakeAll) {
      absl::StrAppend(&left, " (repeatable)");
    }
    rows.emplace_back(left, opt->get_description());
  }
  return Columns(rows);
}

// How a positional argument is written in a usage line, without the brackets of
// an optional one.
std::string ArgumentName(const CLI::Option* opt) {
  return absl::StrCat(opt->get_name(), opt->get_option_text(),
                      opt->get_expected_max() > 1 ? "..." : "");
}

std::vector<const CLI::Option*> Positionals(const CLI::App* app) {
  return app->get_options([](const CLI::Option* opt) { return opt->get_positional(); });
}

const CLI::App* Root(const CLI::App* app) {
  while (app->get_parent() != nullptr) app = app->get_parent();
  return app;
}

std::string MainHelp(const CLI::App* root) {
  Rows commands;
  for (const CLI::App* sub : Listed(root)) AddCommandRows(sub, &commands);
  return absl::StrCat(root->get_description(),
                      "\n\n"
                      "usage: loractl [GLOBAL FLAGS] COMMAND [ARGS] [FLAGS]\n"
                      "       loractl COMMAND --help      usage and flags of one command\n"
                      "       loractl help COMMAND        the same\n\n"
                      "commands:\n",
                      Columns(commands), "\nglobal flags (before or after the command):\n",
                      FlagColumns(root), "\n", root->get_footer(), "\n");
}

std::string GroupHelp(const CLI::App* group) {
  const std::string name = CommandName(group);
  Rows commands;
  AddCommandRows(group, &commands);
  return absl::StrCat("usage: loractl [GLOBAL FLAGS] ", name, " SUBCOMMAND [ARGS] [FLAGS]\n\n",
                      group->get_description(), "\n\nsubcommands:\n", Columns(commands),
                      "\n`loractl ", name, " SUBCOMMAND --help` shows one subcommand's flags.\n");
}

// "global flags: --addr --timeout ... (see loractl --help)", wrapped.
std::string GlobalFlagsLine(const CLI::App* root) {
  constexpr size_t kWidth = 80;
  std::vector<std::string> words = {"global flags:"};
  for (const CLI::Option* opt : Flags(root)) words.push_back(opt->get_name());
  words.push_back("(see loractl --help)");
  std::string out;
  size_t line = 0;
  for (const std::string& word : words) {
    if (line > 0 && line + 1 + word.size() > kWidth) {
      out += "\n ";
      line = 1;
    }
    if (line > 0) {
      out += " ";
      ++line;
    }
    out += word;
    line += word.size();
  }
  return out + "\n";
}

std::string CommandHelp(const CLI::App* command) {
  const std::string synopsis = Synopsis(command);
  std::string out =
      absl::StrCat("usage: loractl [GLOBAL FLAGS] ", CommandName(command),
                   Flags(command).empty() ? "" : " [FLAGS]", synopsis.empty() ? "" : " ", synopsis,
                   "\n\n", command->get_description(), "\n");
  if (!command->get_footer().empty()) absl::StrAppend(&out, "\n", command->get_footer(), "\n");
  Rows arguments;
  for (const CLI::Option* opt : Positionals(command)) {
    arguments.emplace_back(ArgumentName(opt), opt->get_description());
  }
  if (!arguments.empty()) absl::StrAppend(&out, "\narguments:\n", Columns(arguments));
  if (!Flags(command).empty()) absl::StrAppend(&out, "\nflags:\n", FlagColumns(command));
  return absl::StrCat(out, "\n", GlobalFlagsLine(Root(command)));
}

class LoractlHelp : public CLI::Formatter {
 public:
  std::string make_help(const CLI::App* app, std::string /*name*/,
                        CLI::AppFormatMode /*mode*/) const override {
    if (app->get_parent() == nullptr) return MainHelp(app);
    if (!Listed(app).empty()) return GroupHelp(app);
    return CommandHelp(app);
  }
};

void SetFormatter(CLI::App* app, const std::shared_ptr<CLI::FormatterBase>& formatter) {
  app->formatter(formatter);
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
    SetFormatter(sub, formatter);
  }
}

}  // namespace

void UseLoractlHelp(CLI::App* root) { SetFormatter(root, std::make_shared<LoractlHelp>()); }

std::string Synopsis(const CLI::App* command) {
  std::vector<std::string> parts;
  for (const CLI::Option* opt : Positionals(command)) {
    parts.push_back(opt->get_required() ? ArgumentName(opt)
                                        : absl::StrCat("[", ArgumentName(opt), "]"));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace loraserve::loractl
