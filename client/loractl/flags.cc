#include "client/loractl/flags.h"

#include <cmath>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"

namespace loraserve::loractl {
namespace {

// An option of `app` taking one value per occurrence, converted by `convert`
// (which throws CLI::ValidationError for a bad value) from the last value
// given.
CLI::Option* AddOne(CLI::App* app, const FlagHelp& flag,
                    std::function<void(const std::string&)> convert) {
  CLI::Option* opt = app->add_option(
      "--" + flag.name,
      [convert = std::move(convert)](const CLI::results_t& values) {
        convert(values.back());
        return true;
      },
      flag.help);
  return opt->type_name(flag.metavar)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

}  // namespace

bool ParseInt(const std::string& text, int64_t min, int64_t max, int64_t* out) {
  return absl::SimpleAtoi(text, out) && *out >= min && *out <= max;
}

bool ParseUint64(const std::string& text, uint64_t* out) { return absl::SimpleAtoi(text, out); }

bool ParseDouble(const std::string& text, double* out) {
  return absl::SimpleAtod(text, out) && std::isfinite(*out);
}

bool ParseDuration(const std::string& text, absl::Duration* out) {
  double seconds;
  if (absl::SimpleAtod(text, &seconds)) {
    *out = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, out)) {
    return false;
  }
  return *out > absl::ZeroDuration() && *out < absl::InfiniteDuration();
}

CLI::Option* AddFlag(CLI::App* app, const std::string& name, bool* out, const std::string& help) {
  // A flag is an option expecting no value; CLI11 passes "true" for --NAME and
  // VALUE for
  // --NAME=VALUE.
  CLI::Option* opt = app->add_option(
      "--" + name,
      [name, out](const CLI::results_t& values) {
        const std::string& value = values.back();
        if (value != "true" && value != "false") {
          throw CLI::ValidationError(
              absl::StrCat("--", name, " takes no value (or =true / =false)"));
        }
        *out = value == "true";
        return true;
      },
      help);
  return opt->expected(0)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

CLI::Option* AddValue(CLI::App* app, const FlagHelp& flag, const std::string& want,
                      std::function<bool(const std::string&)> convert) {
  return AddOne(app, flag,
                [name = flag.name, want, convert = std::move(convert)](const std::string& text) {
                  if (!convert(text)) {
                    throw CLI::ValidationError(
                        absl::StrCat("--", name, " wants ", want, ", got \"", text, "\""));
                  }
                });
}

CLI::Option* AddString(CLI::App* app, const FlagHelp& flag, std::string* out) {
  return AddOne(app, flag, [out](const std::string& text) { *out = text; });
}

CLI::Option* AddString(CLI::App* app, const FlagHelp& flag, std::optional<std::string>* out) {
  return AddOne(app, flag, [out](const std::string& text) { *out = text; });
}

CLI::Option* AddList(CLI::App* app, const FlagHelp& flag, std::vector<std::string>* out) {
  CLI::Option* opt = app->add_option(
      "--" + flag.name,
      [out](const CLI::results_t& values) {
        *out = values;
        return true;
      },
      flag.help);
  return opt->type_name(flag.metavar)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

}  // namespace loraserve::loractl
