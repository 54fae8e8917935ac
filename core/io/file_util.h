// Small file-system helpers shared by the readers and writers in core/.
#ifndef LORASERVE_CORE_IO_FILE_UTIL_H_
#define LORASERVE_CORE_IO_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace loraserve::core {

// Reads a whole file. NotFound if it does not exist, InvalidArgument if it cannot be read or is
// larger than `max_bytes`.
absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes = 1ull << 30);

// Writes `contents` to `path` atomically and durably: a temporary file in the same directory,
// fsync, rename, fsync of the directory. A reader never sees a partial file, and once this returns
// OK the new file survives a crash; on failure the previous file (if any) is untouched.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// fsync of one directory (its entries: files created, renamed or removed in it).
absl::Status SyncDirectory(const std::string& dir);
// fsync of every regular file and directory under `dir`, and of `dir` itself.
absl::Status SyncTree(const std::string& dir);

// `a/b` with exactly one separator.
std::string JoinPath(absl::string_view a, absl::string_view b);

bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_IO_FILE_UTIL_H_
