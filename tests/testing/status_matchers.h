// gtest matchers for absl::Status / absl::StatusOr (Debian's Abseil ships none):
//   EXPECT_THAT(status_or, IsOk());
//   EXPECT_THAT(status_or, IsOkAndHolds("cpu"));
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument));
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dtype")));
#ifndef LORASERVE_TESTS_TESTING_STATUS_MATCHERS_H_
#define LORASERVE_TESTS_TESTING_STATUS_MATCHERS_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace loraserve::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s.ToString();
  return s.ok();
}

MATCHER_P(StatusIs, code,
          std::string("has status code ") + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher,
           std::string("has status code ") + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(s.message()),
                                       result_listener);
}

// A StatusOr that is OK and whose value matches `value_matcher`.
MATCHER_P(IsOkAndHolds, value_matcher, "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status().ToString();
    return false;
  }
  return ::testing::ExplainMatchResult(value_matcher, *arg, result_listener);
}

}  // namespace loraserve::testing

// Fails the test (and returns) if `expr` (a StatusOr) is not OK; otherwise assigns its value.
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                                 \
  ASSERT_OK_AND_ASSIGN_IMPL_(LORASERVE_TEST_CONCAT_(_statusor_, __LINE__), lhs, expr)
#define LORASERVE_TEST_CONCAT_INNER_(a, b) a##b
#define LORASERVE_TEST_CONCAT_(a, b) LORASERVE_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr)            \
  auto statusor = (expr);                                          \
  ASSERT_TRUE(statusor.ok()) << statusor.status().ToString();      \
  lhs = std::move(statusor).value()
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::loraserve::testing::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::loraserve::testing::IsOk())

#endif  // LORASERVE_TESTS_TESTING_STATUS_MATCHERS_H_
