#include "transfer/file_transfer.h"

#include <openssl/evp.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace loraserve::transfer {

namespace fs = std::filesystem;

struct Sha256::Ctx {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) { EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr); }
Sha256::~Sha256() = default;

void Sha256::Update(absl::string_view data) { EVP_DigestUpdate(ctx_->md, data.data(), data.size()); }

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_->md, digest, &len);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

absl::StatusOr<std::string> AdapterChecksum(const std::map<std::string, std::string>& file_sha256) {
  Sha256 hash;
  for (const char* file : kAdapterChecksumFiles) {
    auto it = file_sha256.find(file);
    if (it == file_sha256.end()) return absl::NotFoundError(absl::StrCat(file, " not found"));
    hash.Update(absl::StrCat(file, " ", it->second, "\n"));
  }
  return hash.HexDigest();
}

absl::StatusOr<std::string> AdapterChecksumOfDir(const std::string& dir) {
  std::map<std::string, std::string> digests;
  std::string buf(1 << 16, '\0');
  for (const char* file : kAdapterChecksumFiles) {
    std::FILE* f = std::fopen(absl::StrCat(dir, "/", file).c_str(), "rb");
    if (f == nullptr) {
      if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(file, " not found"));
      return absl::InternalError(absl::StrCat("cannot open ", file, ": ", std::strerror(errno)));
    }
    Sha256 hash;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
      hash.Update(absl::string_view(buf.data(), n));
    }
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) return absl::InternalError(absl::StrCat("reading ", file, " failed"));
    digests[file] = hash.HexDigest();
  }
  return AdapterChecksum(digests);
}

absl::Status ValidateTransferPath(absl::string_view path) {
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  if (path.empty() || parts.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("file path \"", path, "\" must have 1 to 4 components"));
  }
  for (absl::string_view p : parts) {
    bool ok = !p.empty() && p.size() <= 255 && p.front() != '.';
    for (char c : p) {
      ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file path \"", path,
          "\": each component must be 1 to 255 characters of [A-Za-z0-9._-], not starting with '.'"));
    }
  }
  return absl::OkStatus();
}

struct DirectoryWriter::OpenFile {
  std::string path;   // relative, as sent
  std::string final;  // where it goes once verified
  std::string part;   // where it is written until then
  std::FILE* f = nullptr;
  int64_t size = 0;
  Sha256 hash;
  ~OpenFile() {
    if (f != nullptr) std::fclose(f);
    if (!part.empty()) {
      std::error_code ec;
      fs::remove(part, ec);  // unfinished or refused: never leave it behind
    }
  }
};

DirectoryWriter::DirectoryWriter(std::string dir, int64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {}
DirectoryWriter::~DirectoryWriter() = default;

absl::Status DirectoryWriter::Add(const loraserve::v1::FileChunk& chunk) {
  const std::string& path = chunk.path();
  if (current_ == nullptr || current_->path != path) {
    absl::Status valid = ValidateTransferPath(path);
    if (!valid.ok()) return valid;
    if (current_ != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("file ", path, " started before file ",
                                                     current_->path, " ended (eof chunk missing)"));
    }
    if (done_.count(path) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("file ", path, " was already sent"));
    }
    if (static_cast<int>(done_.size()) >= kMaxTransferFiles) {
      return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxTransferFiles, " files"));
    }
    if (chunk.offset() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("file ", path, ": first chunk at offset ", chunk.offset(), ", expected 0"));
    }
    auto file = std::make_unique<OpenFile>();
    file->path = path;
    file->final = absl::StrCat(dir_, "/", path);
    std::error_code ec;
    fs::create_directories(fs::path(file->final).parent_path(), ec);
    // ".<name>.part": a transfer path component never starts with '.', so this cannot be (or
    // overwrite) a file of the transfer.
    const fs::path final_path(file->final);
    const std::string part =
        (final_path.parent_path() / absl::StrCat(".", final_path.filename().string(), ".part")).string();
    file->f = std::fopen(part.c_str(), "wb");
    if (file->f == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create file ", path, ": ",
                                              std::strerror(errno)));
    }
    file->part = part;
    current_ = std::move(file);
  }
  OpenFile& f = *current_;
  if (chunk.offset() != f.size) {
    return absl::InvalidArgumentError(absl::StrCat("file ", path, ": chunk at offset ",
                                                   chunk.offset(), ", expected ", f.size));
  }
  const std::string& data = chunk.data();
  if (total_ + static_cast<int64_t>(data.size()) > max_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("transfer sends more than its announced ", max_bytes_, " bytes"));
  }
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), f.f) != data.size()) {
    return absl::InternalError(absl::StrCat("writing file ", path, " failed"));
  }
  f.hash.Update(data);
  f.size += static_cast<int64_t>(data.size());
  total_ += static_cast<int64_t>(data.size());
  if (!chunk.eof()) return absl::OkStatus();

  if (chunk.size() != f.size) {
    return absl::InvalidArgumentError(absl::StrCat("file ", path, ": eof chunk says ", chunk.size(),
                                                   " bytes, received ", f.size));
  }
  const std::string digest = f.hash.HexDigest();
  if (chunk.sha256() != digest) {
    return absl::InvalidArgumentError(absl::StrCat("file ", path, ": SHA-256 mismatch (sent \"",
                                                   chunk.sha256().substr(0, 64),
                                                   "\", received data hashes to ", digest, ")"));
  }
  if (std::fclose(f.f) != 0) {
    f.f = nullptr;
    return absl::InternalError(absl::StrCat("closing file ", path, " failed"));
  }
  f.f = nullptr;
  std::error_code ec;
  fs::rename(f.part, f.final, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move ", path, " into place: ", ec.message()));
  f.part.clear();
  done_[path] = f.size;
  sha256s_[path] = digest;
  current_.reset();
  return absl::OkStatus();
}

absl::Status DirectoryWriter::Finish(int64_t expected_total) {
  if (current_ != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("transfer ended inside file ", current_->path, " (no eof chunk)"));
  }
  if (done_.empty()) return absl::InvalidArgumentError("transfer contained no files");
  if (expected_total > 0 && expected_total != total_) {
    return absl::InvalidArgumentError(absl::StrCat("transfer announced ", expected_total,
                                                   " bytes, received ", total_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DirectoryReader>> DirectoryReader::Open(const std::string& dir,
                                                                       int64_t chunk_bytes) {
  std::unique_ptr<DirectoryReader> r(new DirectoryReader());
  r->dir_ = dir;
  r->chunk_bytes_ = std::max<int64_t>(chunk_bytes, 1);
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string rel = fs::relative(it->path(), dir, ec).generic_string();
    absl::Status valid = ValidateTransferPath(rel);
    if (!valid.ok()) return valid;
    const std::uintmax_t size = it->file_size(ec);
    if (ec) break;
    r->total_bytes_ += static_cast<int64_t>(size);
    r->files_.push_back(std::move(rel));
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list output files: ", ec.message()));
  if (static_cast<int>(r->files_.size()) > kMaxTransferFiles) {
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxTransferFiles, " files"));
  }
  std::sort(r->files_.begin(), r->files_.end());
  return r;
}

DirectoryReader::~DirectoryReader() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::StatusOr<bool> DirectoryReader::Next(loraserve::v1::FileChunk* chunk) {
  if (index_ >= files_.size()) return false;
  const std::string& rel = files_[index_];
  if (file_ == nullptr) {
    file_ = std::fopen(absl::StrCat(dir_, "/", rel).c_str(), "rb");
    if (file_ == nullptr) {
      return absl::InternalError(absl::StrCat("cannot open ", rel, ": ", std::strerror(errno)));
    }
    offset_ = 0;
    hash_ = std::make_unique<Sha256>();
  }
  std::string data(static_cast<size_t>(chunk_bytes_), '\0');
  const size_t n = std::fread(data.data(), 1, data.size(), file_);
  if (n < data.size() && std::ferror(file_)) {
    return absl::InternalError(absl::StrCat("reading ", rel, " failed"));
  }
  data.resize(n);
  hash_->Update(data);
  chunk->Clear();
  chunk->set_path(rel);
  chunk->set_offset(offset_);
  offset_ += static_cast<int64_t>(n);
  // A short read means end of file; a full read may also be at the end, which the peek detects.
  bool eof = n < static_cast<size_t>(chunk_bytes_);
  if (!eof) {
    const int c = std::fgetc(file_);
    if (c == EOF) {
      eof = true;
    } else {
      std::ungetc(c, file_);
    }
  }
  *chunk->mutable_data() = std::move(data);
  if (eof) {
    chunk->set_eof(true);
    chunk->set_size(offset_);
    chunk->set_sha256(hash_->HexDigest());
    std::fclose(file_);
    file_ = nullptr;
    ++index_;
  }
  return true;
}

absl::StatusOr<std::string> MakeUniqueDir(const std::string& parent, absl::string_view prefix) {
  std::string templ = absl::StrCat(parent, "/", prefix, "XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a directory under ", parent, ": ",
                                            std::strerror(errno)));
  }
  return std::string(buf.data());
}

void RemoveTree(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  fs::remove_all(path, ec);
}

}  // namespace loraserve::transfer
