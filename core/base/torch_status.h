// The one place where LibTorch exceptions become absl::Status (house style: no exception escapes a
// module). Include only from files that already include LibTorch.
#ifndef LORASERVE_CORE_BASE_TORCH_STATUS_H_
#define LORASERVE_CORE_BASE_TORCH_STATUS_H_

#include <c10/util/Exception.h>

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace loraserve::core {

template <typename T>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

// Result type of CallTorch for a callable returning R: Status for void/Status, R for StatusOr,
// StatusOr<R> otherwise.
template <typename R>
using TorchCallResult = std::conditional_t<
    std::is_void_v<R> || std::is_same_v<R, absl::Status>, absl::Status,
    std::conditional_t<IsStatusOr<R>::value, R, absl::StatusOr<R>>>;

// Runs `fn` and converts a thrown c10::Error (shape mismatch, bad dtype, out of memory...) into
// a status naming `what`. `fn` returns either absl::Status, absl::StatusOr<T> or a plain T.
template <typename Fn>
auto CallTorch(absl::string_view what, Fn&& fn) {
  using R = std::invoke_result_t<Fn>;
  using Out = TorchCallResult<R>;
  auto fail = [&](absl::StatusCode code, const std::string& msg) -> Out {
    // c10 messages carry a C++ backtrace after the first line; keep only the first.
    std::string first = msg.substr(0, msg.find('\n'));
    return absl::Status(code, absl::StrCat(what, ": ", first));
  };
  try {
    if constexpr (std::is_void_v<R>) {
      std::forward<Fn>(fn)();
      return absl::OkStatus();
    } else {
      return Out(std::forward<Fn>(fn)());
    }
  } catch (const c10::OutOfMemoryError& e) {
    return fail(absl::StatusCode::kResourceExhausted, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    return fail(absl::StatusCode::kInternal, e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return fail(absl::StatusCode::kResourceExhausted, "out of memory");
  } catch (const std::exception& e) {
    return fail(absl::StatusCode::kInternal, e.what());
  }
}

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_BASE_TORCH_STATUS_H_
