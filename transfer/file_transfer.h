// Moving directories over the wire as loraserve.v1.FileChunk runs, for both ends (the server's
// uploads and downloads, the client library's): DirectoryWriter assembles a chunk run into a
// directory and checks sizes and SHA-256s; DirectoryReader cuts a directory into chunks. Neither is
// thread-safe (one per transfer); both do blocking file I/O.
#ifndef LORASERVE_TRANSFER_FILE_TRANSFER_H_
#define LORASERVE_TRANSFER_FILE_TRANSFER_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loraserve/v1/files.pb.h"

namespace loraserve::transfer {

inline constexpr int kMaxTransferFiles = 16;

// Incremental SHA-256 (OpenSSL). Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view data);
  // 64 lowercase hex digits. Call once.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// The files that identify a PEFT adapter, in checksum order.
inline constexpr const char* kAdapterChecksumFiles[] = {"adapter_config.json",
                                                        "adapter_model.safetensors"};

// loraserve.v1.Adapter.checksum: SHA-256 (lowercase hex) over the lines "<path> <sha256>\n" of
// kAdapterChecksumFiles, from `file_sha256` (SHA-256 hex digests keyed by path relative to the
// adapter directory, e.g. an upload's). NotFound naming the file if one is missing.
absl::StatusOr<std::string> AdapterChecksum(const std::map<std::string, std::string>& file_sha256);
// The same over the files in `dir` (blocking reads). NotFound if a file is missing, Internal if it
// cannot be read.
absl::StatusOr<std::string> AdapterChecksumOfDir(const std::string& dir);

// OK when `path` is 1 to 4 '/'-separated components, each 1 to 255 characters of [A-Za-z0-9._-]
// not starting with '.'; InvalidArgument otherwise.
absl::Status ValidateTransferPath(absl::string_view path);

class DirectoryWriter {
 public:
  // Writes below `dir` (which must exist); accepts at most `max_bytes` bytes in all (e.g. the size
  // an upload announced, itself within the server's cap). Each file is written to ".<name>.part"
  // beside its final place and renamed there (replacing a file of that name) only once its size and SHA-256 check
  // out; a file left unfinished is removed.
  DirectoryWriter(std::string dir, int64_t max_bytes);
  ~DirectoryWriter();

  // InvalidArgument for a bad path, an offset that does not continue the file, a chunk for a file
  // already ended, another file started before the current one ended, more than kMaxTransferFiles
  // files, more than `max_bytes` in all, or (on the eof chunk) a size or SHA-256 mismatch;
  // Internal when the disk write fails.
  absl::Status Add(const loraserve::v1::FileChunk& chunk);
  // OK when every file ended and `expected_total` (if > 0) bytes arrived. InvalidArgument otherwise.
  absl::Status Finish(int64_t expected_total);
  int64_t total_bytes() const { return total_; }
  // The verified SHA-256 (hex) of every ended file, keyed by path.
  const std::map<std::string, std::string>& sha256s() const { return sha256s_; }

 private:
  struct OpenFile;
  std::string dir_;
  int64_t max_bytes_;
  int64_t total_ = 0;
  std::unique_ptr<OpenFile> current_;
  std::map<std::string, int64_t> done_;  // ended files and their sizes
  std::map<std::string, std::string> sha256s_;
};

class DirectoryReader {
 public:
  // Lists the regular files below `dir` (sorted by relative path). InvalidArgument if a name is
  // not transferable or there are more than kMaxTransferFiles; Internal if it cannot be listed.
  static absl::StatusOr<std::unique_ptr<DirectoryReader>> Open(const std::string& dir,
                                                               int64_t chunk_bytes);
  ~DirectoryReader();

  // The next chunk; false once every file has been sent. Internal on read errors.
  absl::StatusOr<bool> Next(loraserve::v1::FileChunk* chunk);
  // The size of all files together, as listed by Open.
  int64_t total_bytes() const { return total_bytes_; }
  int num_files() const { return static_cast<int>(files_.size()); }

 private:
  DirectoryReader() = default;
  std::string dir_;
  int64_t chunk_bytes_ = 0;
  int64_t total_bytes_ = 0;
  std::vector<std::string> files_;
  size_t index_ = 0;
  std::FILE* file_ = nullptr;
  int64_t offset_ = 0;
  std::unique_ptr<Sha256> hash_;
};

// Makes a fresh directory `<parent>/<prefix>XXXXXX` (mkdtemp). Internal on failure.
absl::StatusOr<std::string> MakeUniqueDir(const std::string& parent, absl::string_view prefix);
// Removes `path` recursively; errors ignored (best effort clean-up).
void RemoveTree(const std::string& path);

}  // namespace loraserve::transfer

#endif  // LORASERVE_TRANSFER_FILE_TRANSFER_H_
