// Reading and writing the safetensors format (8-byte little-endian header length, JSON header
// `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`, then raw little-endian data).
//
// This layer knows nothing of LibTorch: it validates a file and hands out byte views. The bridge to
// at::Tensor lives in core/io/tensor_io.h.
#ifndef LORASERVE_CORE_IO_SAFETENSORS_H_
#define LORASERVE_CORE_IO_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/io/dtype.h"

namespace loraserve::core {

// One tensor's entry in a safetensors header.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset into the data section
  uint64_t end = 0;    // one past the last byte

  int64_t NumElements() const;
  uint64_t NumBytes() const { return end - begin; }
};

// A validated, read-only safetensors file. The bytes are memory-mapped privately (copy-on-write),
// so views stay valid for the lifetime of the object and writing through them never touches the
// file. Immutable after construction; thread-safe for concurrent readers.
class SafetensorsFile {
 public:
  struct Options {
    // Headers longer than this are refused (a corrupt length must not make us allocate gigabytes).
    uint64_t max_header_bytes = 100ull << 20;
  };

  // Maps and validates `path`. NotFound if the file does not exist; InvalidArgument naming the
  // problem for every malformed file (truncated, header length past EOF or over the cap, invalid
  // JSON, unknown dtype, shape/byte-size mismatch, offsets outside the data, overlapping or out of
  // order tensors, gaps).
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(const std::string& path);
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(const std::string& path,
                                                                     const Options& options);
  // Same validation over bytes held in memory; `display_name` appears in error messages.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> FromBytes(
      std::string bytes, std::string display_name);
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> FromBytes(
      std::string bytes, std::string display_name, const Options& options);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Entries sorted by name.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // nullptr when absent.
  const SafetensorsEntry* Find(absl::string_view name) const;
  // `__metadata__` (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The bytes of one entry of this file.
  absl::Span<const uint8_t> Bytes(const SafetensorsEntry& entry) const;
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse(const Options& options);

  std::string path_;
  std::string owned_bytes_;     // used by FromBytes
  void* mapping_ = nullptr;     // used by Open
  size_t mapping_size_ = 0;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to be written: raw little-endian bytes of `shape` elements of `dtype`.
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  absl::string_view bytes;
};

// Serialises tensors (in name order, header space-padded to a multiple of 8 bytes) into a string.
// InvalidArgument on duplicate names, a reserved name, or bytes that disagree with dtype·shape.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<SafetensorsTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Serialises and writes atomically (temporary file + rename).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_IO_SAFETENSORS_H_
