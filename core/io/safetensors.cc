#include "core/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/base/status_macros.h"
#include "core/io/file_util.h"
#include "nlohmann/json.hpp"

namespace loraserve::core {
namespace {

using nlohmann::json;

constexpr absl::string_view kMetadataKey = "__metadata__";

absl::Status Bad(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", file, ": ", what));
}

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

bool IsNonNegativeInteger(const json& j) {
  return j.is_number_unsigned() || (j.is_number_integer() && j.get<int64_t>() >= 0);
}

// Parses one header entry; `file` is only for messages.
absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& file, const std::string& name,
                                            const json& j) {
  const std::string where = absl::StrCat("tensor \"", name, "\": ");
  if (!j.is_object()) return Bad(file, where + "entry is not a JSON object");
  auto dtype_it = j.find("dtype");
  auto shape_it = j.find("shape");
  auto offsets_it = j.find("data_offsets");
  if (dtype_it == j.end() || !dtype_it->is_string()) {
    return Bad(file, where + "missing or non-string \"dtype\"");
  }
  if (shape_it == j.end() || !shape_it->is_array()) {
    return Bad(file, where + "missing or non-array \"shape\"");
  }
  if (offsets_it == j.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !IsNonNegativeInteger((*offsets_it)[0]) || !IsNonNegativeInteger((*offsets_it)[1])) {
    return Bad(file, where + "\"data_offsets\" must be two non-negative integers [begin, end]");
  }
  SafetensorsEntry entry;
  entry.name = name;
  auto dtype = ParseDType(dtype_it->get<std::string>());
  if (!dtype.ok()) return Bad(file, where + std::string(dtype.status().message()));
  entry.dtype = *dtype;
  uint64_t numel = 1;
  for (const json& d : *shape_it) {
    if (!IsNonNegativeInteger(d)) return Bad(file, where + "shape entries must be non-negative integers");
    const uint64_t dim = d.get<uint64_t>();
    if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim) {
      return Bad(file, where + "shape is too large");
    }
    numel *= dim;
    entry.shape.push_back(static_cast<int64_t>(dim));
  }
  entry.begin = (*offsets_it)[0].get<uint64_t>();
  entry.end = (*offsets_it)[1].get<uint64_t>();
  if (entry.end < entry.begin) {
    return Bad(file, absl::StrCat(where, "data_offsets out of order: begin ", entry.begin,
                                  " > end ", entry.end));
  }
  const uint64_t expected = numel * DTypeSize(entry.dtype);
  if (entry.NumBytes() != expected) {
    return Bad(file, absl::StrCat(where, "shape/byte-size mismatch: ", DTypeName(entry.dtype),
                                  " with ", numel, " elements needs ", expected,
                                  " bytes but data_offsets span ", entry.NumBytes()));
  }
  return entry;
}

}  // namespace

int64_t SafetensorsEntry::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  return Open(path, Options());
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const Options& options) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = absl::StrCat("cannot open safetensors file ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    return absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Bad(path, "not a regular file");
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    // MAP_PRIVATE + PROT_WRITE: tensors viewing these pages may be written (copy-on-write) without
    // ever modifying the file.
    void* m = mmap(nullptr, file->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Bad(path, absl::StrCat("mmap failed: ", std::strerror(err)));
    }
    file->mapping_ = m;
    file->mapping_size_ = file->size_;
    file->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  LORASERVE_RETURN_IF_ERROR(file->Parse(options));
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::FromBytes(
    std::string bytes, std::string display_name) {
  return FromBytes(std::move(bytes), std::move(display_name), Options());
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::FromBytes(
    std::string bytes, std::string display_name, const Options& options) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(display_name);
  file->owned_bytes_ = std::move(bytes);
  file->base_ = reinterpret_cast<const uint8_t*>(file->owned_bytes_.data());
  file->size_ = file->owned_bytes_.size();
  LORASERVE_RETURN_IF_ERROR(file->Parse(options));
  return std::shared_ptr<const SafetensorsFile>(std::move(file));
}

absl::Status SafetensorsFile::Parse(const Options& options) {
  if (size_ < 8) {
    return Bad(path_, absl::StrCat("truncated: ", size_,
                                   " bytes, shorter than the 8-byte header length"));
  }
  const uint64_t header_len = ReadLe64(base_);
  if (header_len > options.max_header_bytes) {
    return Bad(path_, absl::StrCat("header length ", header_len, " exceeds the cap of ",
                                   options.max_header_bytes, " bytes"));
  }
  if (header_len > size_ - 8) {
    return Bad(path_, absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                   size_, " bytes)"));
  }
  if (header_len == 0) return Bad(path_, "empty JSON header");
  const char* header = reinterpret_cast<const char*>(base_ + 8);
  json root;
  try {
    root = json::parse(header, header + header_len);
  } catch (const json::exception& e) {
    return Bad(path_, absl::StrCat("invalid JSON header: ", e.what()));
  }
  if (!root.is_object()) return Bad(path_, "JSON header is not an object");

  data_ = base_ + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it.value().is_object()) return Bad(path_, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return Bad(path_, absl::StrCat("__metadata__ value for \"", m.key(), "\" is not a string"));
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    LORASERVE_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(path_, it.key(), it.value()));
    if (entry.end > data_size) {
      return Bad(path_, absl::StrCat("tensor \"", entry.name, "\": data_offsets [", entry.begin,
                                     ", ", entry.end, "] lie outside the data section (",
                                     data_size, " bytes)"));
    }
    entries_.push_back(std::move(entry));
  }

  // The data section must be covered exactly once, in offset order: no overlaps, no gaps.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
                     return a->begin < b->begin || (a->begin == b->begin && a->end < b->end);
                   });
  uint64_t cursor = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < cursor) {
      return Bad(path_, absl::StrCat("tensors \"", prev->name, "\" and \"", e->name,
                                     "\" overlap in the data section"));
    }
    if (e->begin > cursor) {
      return Bad(path_, absl::StrCat("gap of ", e->begin - cursor, " bytes before tensor \"",
                                     e->name, "\" in the data section"));
    }
    cursor = e->end;
    prev = e;
  }
  if (cursor != data_size) {
    return Bad(path_, absl::StrCat("data section has ", data_size - cursor,
                                   " trailing bytes not covered by any tensor"));
  }
  std::sort(entries_.begin(), entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
  return absl::OkStatus();
}

const SafetensorsEntry* SafetensorsFile::Find(absl::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const SafetensorsEntry& e, absl::string_view n) { return e.name < n; });
  if (it == entries_.end() || it->name != name) return nullptr;
  return &*it;
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(const SafetensorsEntry& entry) const {
  return absl::Span<const uint8_t>(data_ + entry.begin, entry.NumBytes());
}

absl::StatusOr<std::string> SerializeSafetensors(const std::vector<SafetensorsTensor>& tensors,
                                                 const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsTensor*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const SafetensorsTensor* a, const SafetensorsTensor* b) { return a->name < b->name; });
  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header[std::string(kMetadataKey)] = std::move(m);
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const SafetensorsTensor& t = *sorted[i];
    if (t.name.empty() || t.name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat("invalid tensor name \"", t.name, "\""));
    }
    if (i > 0 && sorted[i - 1]->name == t.name) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name \"", t.name, "\""));
    }
    uint64_t numel = 1;
    json shape = json::array();
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\": negative dimension"));
      }
      numel *= static_cast<uint64_t>(d);
      shape.push_back(d);
    }
    if (numel * DTypeSize(t.dtype) != t.bytes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", t.name, "\": ", t.bytes.size(), " bytes given but ",
                       DTypeName(t.dtype), " shape needs ", numel * DTypeSize(t.dtype)));
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", std::move(shape)},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header_text.size() + offset);
  uint64_t len = header_text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += header_text;
  for (const SafetensorsTensor* t : sorted) out.append(t->bytes.data(), t->bytes.size());
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  LORASERVE_ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors, metadata));
  return WriteFileAtomically(path, bytes);
}

}  // namespace loraserve::core
