#include "core/io/tensor_io.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/base/status_macros.h"
#include "core/base/torch_status.h"

namespace loraserve::core {

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return at::kBool;
    case DType::kU8: return at::kByte;
    case DType::kI8: return at::kChar;
    case DType::kI16: return at::kShort;
    case DType::kI32: return at::kInt;
    case DType::kI64: return at::kLong;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF32: return at::kFloat;
    case DType::kF64: return at::kDouble;
  }
  return at::kFloat;
}

absl::StatusOr<DType> FromScalarType(at::ScalarType type) {
  switch (type) {
    case at::kBool: return DType::kBool;
    case at::kByte: return DType::kU8;
    case at::kChar: return DType::kI8;
    case at::kShort: return DType::kI16;
    case at::kInt: return DType::kI32;
    case at::kLong: return DType::kI64;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    case at::kFloat: return DType::kF32;
    case at::kDouble: return DType::kF64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("scalar type ", c10::toString(type), " cannot be stored in safetensors"));
  }
}

absl::StatusOr<at::Tensor> TensorFromSafetensors(const std::shared_ptr<const SafetensorsFile>& file,
                                                 const SafetensorsEntry& entry) {
  return CallTorch(absl::StrCat("reading tensor ", entry.name), [&]() -> at::Tensor {
    const absl::Span<const uint8_t> bytes = file->Bytes(entry);
    const auto options = at::TensorOptions().dtype(ToScalarType(entry.dtype));
    const size_t align = DTypeSize(entry.dtype);
    // The mapping is private and writable, so handing out a mutable pointer is safe.
    void* ptr = const_cast<uint8_t*>(bytes.data());
    if (entry.NumElements() > 0 && reinterpret_cast<uintptr_t>(ptr) % align == 0) {
      std::shared_ptr<const SafetensorsFile> keep = file;
      return at::from_blob(
          ptr, entry.shape, [keep](void*) mutable { keep.reset(); }, options);
    }
    at::Tensor out = at::empty(entry.shape, options);
    if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
    return out;
  });
}

absl::StatusOr<std::map<std::string, at::Tensor>> LoadSafetensors(const std::string& path) {
  LORASERVE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const SafetensorsEntry& e : file->entries()) {
    LORASERVE_ASSIGN_OR_RETURN(out[e.name], TensorFromSafetensors(file, e));
  }
  return out;
}

absl::Status SaveSafetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;
  std::vector<SafetensorsTensor> raw;
  LORASERVE_RETURN_IF_ERROR(CallTorch("preparing tensors for " + path, [&]() -> absl::Status {
    for (const auto& [name, t] : tensors) {
      if (!t.defined()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" is undefined"));
      }
      LORASERVE_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
      at::Tensor c = t.to(at::kCPU).contiguous();
      keep.push_back(c);
      raw.push_back(SafetensorsTensor{
          name, dtype, std::vector<int64_t>(c.sizes().begin(), c.sizes().end()),
          absl::string_view(static_cast<const char*>(c.data_ptr()), c.nbytes())});
    }
    return absl::OkStatus();
  }));
  return WriteSafetensors(path, raw, metadata);
}

}  // namespace loraserve::core
