// Element types of tensors as they appear in safetensors files, independent of LibTorch.
#ifndef LORASERVE_CORE_IO_DTYPE_H_
#define LORASERVE_CORE_IO_DTYPE_H_

#include <cstddef>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace loraserve::core {

enum class DType { kBool, kU8, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64 };

// The safetensors spelling ("F32", "BF16", ...).
absl::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);
// Parses the safetensors spelling; InvalidArgument for anything else (e.g. "F8_E4M3", "X12").
absl::StatusOr<DType> ParseDType(absl::string_view name);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_IO_DTYPE_H_
