// What loractl writes besides JSON documents: number and token formatting,
// aligned tables and "key: value" lists on stdout, and the transfer progress
// bar on stderr.
#ifndef CLIENT_LORACTL_OUTPUT_H_
#define CLIENT_LORACTL_OUTPUT_H_

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "client/client.h"

namespace loraserve::loractl {

// "512 B", "28.0 KiB", "1.5 GiB".
std::string FormatBytes(int64_t bytes);
// `v` with `decimals` digits after the point.
std::string FormatFloat(double v, int decimals = 4);
// Text of a token for a table: quoted, control characters escaped.
std::string Quote(const std::string& text);

// Prints rows on stdout as columns separated by two spaces; the first row is
// the header. Columns whose index is in `right` are right-aligned.
void PrintTable(const std::vector<std::vector<std::string>>& rows,
                const std::set<size_t>& right = {});
// Prints "key: value" lines on stdout with the values aligned.
void PrintFields(const std::vector<std::pair<std::string, std::string>>& fields);

// A transfer progress bar on stderr: redrawn in place on a terminal, otherwise
// one line per 10% step (and the last). Not thread-safe; driven by the client's
// ProgressCallback.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool tty) : label_(std::move(label)), tty_(tty) {}
  ~ProgressBar() { Finish(); }

  void Update(const loraserve::TransferProgress& p);
  // Ends the line drawn on a terminal; idempotent.
  void Finish();

 private:
  const std::string label_;
  const bool tty_;
  bool drawn_ = false;
  bool finished_ = false;
  int last_percent_ = -1;
  absl::Time last_draw_ = absl::InfinitePast();
};

}  // namespace loraserve::loractl

#endif  // CLIENT_LORACTL_OUTPUT_H_
