// Turns a fuzz input into structured values (a small FuzzedDataProvider that also builds with GCC
// for the standalone replay driver). Reading past the end gives zeros and empty strings.
#ifndef LORASERVE_TESTS_FUZZ_BYTE_READER_H_
#define LORASERVE_TESTS_FUZZ_BYTE_READER_H_

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <string>

namespace loraserve::fuzz {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | Byte();
    return v;
  }
  // Up to `max` bytes, length first.
  std::string String(size_t max) {
    size_t n = Byte();
    if (n > max) n = max;
    if (n > size_ - std::min(pos_, size_)) n = size_ - std::min(pos_, size_);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  std::string Rest() {
    std::string s(reinterpret_cast<const char*>(data_ + std::min(pos_, size_)), size_ - std::min(pos_, size_));
    pos_ = size_;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace loraserve::fuzz

#endif  // LORASERVE_TESTS_FUZZ_BYTE_READER_H_
