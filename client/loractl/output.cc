#include "client/loractl/output.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace loraserve::loractl {

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = -1;
  while (v >= 1024 && unit < 3) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[unit]);
  return buf;
}

std::string FormatFloat(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void PrintTable(const std::vector<std::vector<std::string>>& rows, const std::set<size_t>& right) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const size_t pad = width[i] - row[i].size();
      const bool last = i + 1 == row.size();
      if (i > 0) line += "  ";
      if (right.count(i)) line += std::string(pad, ' ');
      line += row[i];
      if (!right.count(i) && !last) line += std::string(pad, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void PrintFields(const std::vector<std::pair<std::string, std::string>>& fields) {
  size_t width = 0;
  for (const auto& f : fields) width = std::max(width, f.first.size());
  for (const auto& f : fields) {
    std::printf("%s:%s %s\n", f.first.c_str(), std::string(width - f.first.size(), ' ').c_str(),
                f.second.c_str());
  }
}

void ProgressBar::Update(const loraserve::TransferProgress& p) {
  const bool done = p.total_bytes > 0 && p.bytes_done >= p.total_bytes;
  const int percent =
      p.total_bytes > 0 ? static_cast<int>(100 * p.bytes_done / std::max<int64_t>(p.total_bytes, 1))
                        : -1;
  const absl::Time now = absl::Now();
  if (tty_) {
    if (!done && drawn_ && now - last_draw_ < absl::Milliseconds(100)) return;
  } else if (!done && drawn_ && percent / 10 == last_percent_ / 10) {
    return;
  }
  if (done && percent == last_percent_ && drawn_) return;
  last_draw_ = now;
  last_percent_ = percent;
  std::string line = label_ + " ";
  if (percent >= 0) {
    constexpr int kWidth = 30;
    const int filled = std::min(kWidth, percent * kWidth / 100);
    line += "[" + std::string(filled, '#') + std::string(kWidth - filled, '-') + "] ";
    line += absl::StrCat(FormatBytes(p.bytes_done), " / ", FormatBytes(p.total_bytes), " ",
                         std::min(percent, 100), "%");
  } else {
    line += FormatBytes(p.bytes_done);
  }
  line += absl::StrCat("  ", p.files_done, " files  ", p.path);
  if (tty_) {
    // Clear the rest of the previous, possibly longer, line.
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (tty_ && drawn_ && !finished_) std::fprintf(stderr, "\n");
  finished_ = true;
}

}  // namespace loraserve::loractl
