// libFuzzer target: UploadAdapter's file-chunk reassembly (transfer::DirectoryWriter) with its path
// rules. The input is a sequence of chunks (path from a list of good and hostile ones or arbitrary
// bytes, offset, data, eof, size, SHA-256 right or wrong); then Finish. Checked after each input:
// nothing was written outside the upload directory, every file Finish accepted has the SHA-256 it
// announced, and nothing is left half-written ("*.part") once the writer is gone.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "loraserve/v1/files.pb.h"
#include "tests/fuzz/byte_reader.h"
#include "transfer/file_transfer.h"

namespace {

namespace fs = std::filesystem;

const std::string kPaths[] = {
    "adapter_config.json", "adapter_model.safetensors", "sub/dir/file.bin", "../escape", "/abs/path",
    "a/../../b", ".hidden", "a//b", "a/./b", "", "x/", std::string(300, 'n'), "a\\b", "\xff\xfe",
    "a/b/c/d/e", "con:", "dir/.part",
};

std::string Sha(const std::string& data) {
  loraserve::transfer::Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

const fs::path& Base() {
  static const fs::path base = [] {
    char tmpl[] = "/tmp/loraserve-fuzz-upload-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) std::abort();
    return fs::path(tmpl);
  }();
  return base;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  loraserve::fuzz::ByteReader in(data, size);
  const fs::path dir = Base() / "upload";
  fs::remove_all(Base());
  fs::create_directories(dir);
  std::map<std::string, std::string> content;  // what was sent per path, in order
  {
    const int64_t cap = 1 + (in.Byte() % 4) * 4096;
    loraserve::transfer::DirectoryWriter writer(dir.string(), cap);
    for (int i = 0; i < 32 && !in.empty(); ++i) {
      loraserve::v1::FileChunk chunk;
      const uint8_t pick = in.Byte();
      const std::string path = pick < 200 ? kPaths[pick % (sizeof(kPaths) / sizeof(kPaths[0]))]
                                          : in.String(64);
      chunk.set_path(path);
      const std::string bytes = in.String(255);
      const uint8_t flags = in.Byte();
      // Offset: usually where the file continues, sometimes anywhere.
      chunk.set_offset((flags & 1) ? static_cast<int64_t>(in.U32()) - (1 << 16)
                                   : static_cast<int64_t>(content[path].size()));
      chunk.set_data(bytes);
      const std::string whole = content[path] + bytes;
      if (flags & 2) {
        chunk.set_eof(true);
        chunk.set_size((flags & 4) ? static_cast<int64_t>(whole.size()) : static_cast<int64_t>(in.U32()));
        chunk.set_sha256((flags & 8) ? Sha(whole) : in.String(64));
      }
      if (writer.Add(chunk).ok()) content[path] = whole;
    }
    if (writer.Finish(0).ok()) {
      for (const auto& [path, sha] : writer.sha256s()) {
        std::ifstream f(dir / path, std::ios::binary);
        const std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (Sha(got) != sha || path.find("..") != std::string::npos || path.front() == '/') std::abort();
      }
    }
  }
  // Nothing outside the upload directory; nothing half-written after the writer is gone.
  for (const auto& e : fs::recursive_directory_iterator(Base())) {
    const std::string rel = fs::relative(e.path(), Base()).string();
    if (rel != "upload" && rel.rfind("upload/", 0) != 0) std::abort();
    if (e.path().extension() == ".part") std::abort();
  }
  return 0;
}
