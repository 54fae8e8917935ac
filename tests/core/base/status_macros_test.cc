#include "core/base/status_macros.h"

#include <gtest/gtest.h>

#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::IsOk;
using ::loraserve::testing::StatusIs;

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  LORASERVE_ASSIGN_OR_RETURN(int h, Half(x));
  LORASERVE_ASSIGN_OR_RETURN(h, Half(h));  // assigning to an existing variable
  return h;
}

absl::Status CheckEven(int x) {
  LORASERVE_RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagatesErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CheckEven(4), IsOk());
  EXPECT_THAT(CheckEven(3), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(StatusMatchersTest, MatchersCanFail) {
  EXPECT_FALSE(::testing::Matches(IsOk())(absl::InternalError("x")));
  EXPECT_FALSE(::testing::Matches(StatusIs(absl::StatusCode::kNotFound))(absl::OkStatus()));
  EXPECT_TRUE(::testing::Matches(StatusIs(absl::StatusCode::kNotFound))(absl::NotFoundError("x")));
}

}  // namespace
}  // namespace loraserve::core
