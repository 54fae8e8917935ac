// Typed flags for loractl's CLI11 commands. CLI11 finds the flags and their
// values; these functions convert each value when the command line is parsed,
// with loractl's rules (decimal integers only, finite numbers, true/false for
// flags) rather than CLI11's (strtoll with base 0, so "010" is 8, and strtoull,
// which takes "-1"). A bad value throws CLI::ValidationError whose message
// names the flag and what it wants. Each flag takes one value per occurrence
// and the last occurrence wins, except lists, which keep every value.
#ifndef CLIENT_LORACTL_FLAGS_H_
#define CLIENT_LORACTL_FLAGS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace loraserve::loractl {

// The flag's name and help: `name` without the leading "--"; `metavar` names
// its value in
// --help ("N", "HOST:PORT"); `help` may have several lines.
struct FlagHelp {
  std::string name;
  std::string metavar;
  std::string help;
};

// --NAME, --NAME=true or --NAME=false.
CLI::Option* AddFlag(CLI::App* app, const std::string& name, bool* out, const std::string& help);

// --NAME VALUE; `convert` stores the value and returns false for a bad one,
// which the error message says wants `want` (e.g. "an integer in [0, 20]").
CLI::Option* AddValue(CLI::App* app, const FlagHelp& flag, const std::string& want,
                      std::function<bool(const std::string&)> convert);

// --NAME VALUE, any text.
CLI::Option* AddString(CLI::App* app, const FlagHelp& flag, std::string* out);
CLI::Option* AddString(CLI::App* app, const FlagHelp& flag, std::optional<std::string>* out);
// --NAME VALUE, repeatable: every value kept, in order.
CLI::Option* AddList(CLI::App* app, const FlagHelp& flag, std::vector<std::string>* out);

// Decimal integers in [min, max]; non-negative 64-bit integers; finite numbers;
// positive durations given as seconds ("30", "0.5") or as an absl duration
// ("500ms", "2m").
bool ParseInt(const std::string& text, int64_t min, int64_t max, int64_t* out);
bool ParseUint64(const std::string& text, uint64_t* out);
bool ParseDouble(const std::string& text, double* out);
bool ParseDuration(const std::string& text, absl::Duration* out);

// --NAME N, an integer in [min, max] stored in *out.
template <typename T>
CLI::Option* AddInt(CLI::App* app, const FlagHelp& flag, T* out, int64_t min, int64_t max) {
  return AddValue(app, flag, absl::StrCat("an integer in [", min, ", ", max, "]"),
                  [out, min, max](const std::string& text) {
                    int64_t v;
                    if (!ParseInt(text, min, max, &v)) return false;
                    *out = static_cast<T>(v);
                    return true;
                  });
}

// --NAME VALUE read by `parse` into a V and stored in *out (a V or a std::optional<V>); the
// error message says the flag wants `want`.
template <typename V, typename T>
CLI::Option* AddParsed(CLI::App* app, const FlagHelp& flag, const std::string& want,
                       bool (*parse)(const std::string&, V*), T* out) {
  return AddValue(app, flag, want, [parse, out](const std::string& text) {
    V v;
    if (!parse(text, &v)) return false;
    *out = v;
    return true;
  });
}

// --NAME N, a non-negative 64-bit integer (into uint64_t or std::optional<uint64_t>).
template <typename T>
CLI::Option* AddUint64(CLI::App* app, const FlagHelp& flag, T* out) {
  return AddParsed<uint64_t>(app, flag, "a non-negative integer", ParseUint64, out);
}

// --NAME X, a finite number (into double or std::optional<double>).
template <typename T>
CLI::Option* AddDouble(CLI::App* app, const FlagHelp& flag, T* out) {
  return AddParsed<double>(app, flag, "a number", ParseDouble, out);
}

// --NAME DURATION, positive (see ParseDuration).
inline CLI::Option* AddDuration(CLI::App* app, const FlagHelp& flag, absl::Duration* out) {
  return AddParsed<absl::Duration>(app, flag, "a positive duration (seconds, or e.g. 500ms)",
                                   ParseDuration, out);
}

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_FLAGS_H_
