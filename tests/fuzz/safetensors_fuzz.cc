// libFuzzer target: the safetensors reader over arbitrary bytes (header length, JSON header,
// dtypes, shapes, offsets). A file it accepts must describe tensors that lie inside its data,
// whose byte sizes match their shapes, and that can be read whole.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/io/dtype.h"
#include "core/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using loraserve::core::SafetensorsFile;
  std::string bytes(reinterpret_cast<const char*>(data), size);
  SafetensorsFile::Options options;
  options.max_header_bytes = 1 << 20;
  auto file = SafetensorsFile::FromBytes(std::move(bytes), "fuzz.safetensors", options);
  if (!file.ok()) return 0;
  uint64_t sum = 0;
  for (const auto& e : (*file)->entries()) {
    if (e.end < e.begin || e.end > size) std::abort();
    if ((*file)->Find(e.name) != &e) std::abort();
    const auto span = (*file)->Bytes(e);
    if (span.size() != e.NumBytes()) std::abort();
    for (uint8_t b : span) sum += b;  // every byte readable (ASan checks the bounds)
  }
  return static_cast<int>(sum & 0);
}
