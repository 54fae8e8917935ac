// Bridge between safetensors files and LibTorch tensors.
#ifndef LORASERVE_CORE_IO_TENSOR_IO_H_
#define LORASERVE_CORE_IO_TENSOR_IO_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/dtype.h"
#include "core/io/safetensors.h"

namespace loraserve::core {

at::ScalarType ToScalarType(DType dtype);
// InvalidArgument for scalar types safetensors cannot hold (complex, quantized...).
absl::StatusOr<DType> FromScalarType(at::ScalarType type);

// A CPU tensor viewing `entry`'s bytes without copying when they are suitably aligned (the tensor
// keeps `file` alive); a copy otherwise. Writing to the tensor never changes the file.
absl::StatusOr<at::Tensor> TensorFromSafetensors(const std::shared_ptr<const SafetensorsFile>& file,
                                                 const SafetensorsEntry& entry);

// Every tensor of a safetensors file by name.
absl::StatusOr<std::map<std::string, at::Tensor>> LoadSafetensors(const std::string& path);

// Writes tensors (any device, any layout; made contiguous on CPU) atomically.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;
absl::Status SaveSafetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {
                                 {"format", "pt"}});

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_IO_TENSOR_IO_H_
