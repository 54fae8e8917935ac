#include "client/loractl/commands.h"

#include <utility>

#include "CLI/CLI.hpp"

namespace loraserve::loractl {
namespace {

// Settings every subcommand shares: flags it does not know (the global ones)
// and positional arguments beyond its own go to its parent, so they are
// accepted after the command and extra ones are reported by main.cc; at most
// one subcommand below it.
CLI::App* AddSubcommand(CLI::App* parent, const std::string& name, const std::string& summary) {
  CLI::App* app = parent->add_subcommand(name, summary);
  app->fallthrough();
  app->require_subcommand(0, 1);
  return app;
}

}  // namespace

CLI::App* CommandTable::Add(CLI::App* parent, const std::string& name, const std::string& summary,
                            const std::string& details, RunCommand run, bool needs_client) {
  CLI::App* app = AddSubcommand(parent, name, summary);
  app->footer(details);
  commands_.push_back({app, std::move(run), needs_client});
  return app;
}

const Command* CommandTable::Find(const CLI::App* app) const {
  for (const Command& c : commands_) {
    if (c.app == app) return &c;
  }
  return nullptr;
}

CLI::App* AddGroup(CLI::App* parent, const std::string& name, const std::string& summary) {
  return AddSubcommand(parent, name, summary);
}

std::string CommandName(const CLI::App* app) {
  std::string name;
  for (; app != nullptr && app->get_parent() != nullptr; app = app->get_parent()) {
    name = name.empty() ? app->get_name() : app->get_name() + " " + name;
  }
  return name;
}

}  // namespace loraserve::loractl
