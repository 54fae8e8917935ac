// Status propagation macros. Debian's Abseil (20220623) ships neither ABSL_RETURN_IF_ERROR nor
// ABSL_ASSIGN_OR_RETURN, so the project defines its own, once, here.
#ifndef LORASERVE_CORE_BASE_STATUS_MACROS_H_
#define LORASERVE_CORE_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LORASERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define LORASERVE_STATUS_CONCAT_(a, b) LORASERVE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if it is not OK.
#define LORASERVE_RETURN_IF_ERROR(expr)                        \
  do {                                                         \
    ::absl::Status loraserve_status_ = (expr);                 \
    if (!loraserve_status_.ok()) return loraserve_status_;     \
  } while (false)

// `LORASERVE_ASSIGN_OR_RETURN(lhs, expr)`: evaluates `expr` (an absl::StatusOr<T>); on error returns
// its status from the enclosing function, otherwise move-assigns the value to `lhs`, which may be a
// declaration (`auto x`) or an existing variable.
#define LORASERVE_ASSIGN_OR_RETURN(lhs, expr)                                            \
  LORASERVE_ASSIGN_OR_RETURN_IMPL_(LORASERVE_STATUS_CONCAT_(loraserve_statusor_, __LINE__), \
                                   lhs, expr)

#define LORASERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                     \
  if (!statusor.ok()) return std::move(statusor).status();    \
  lhs = std::move(statusor).value()

#endif  // LORASERVE_CORE_BASE_STATUS_MACROS_H_
