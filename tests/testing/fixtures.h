// Locating the shared test data (`../shared` beside the repository: the real model and PEFT
// fixtures). Tests that need it start with LORASERVE_REQUIRE_SHARED(): where it is missing the test
// is skipped with a loud message, except under CI=true, where a missing ../shared fails the test
// (so a wrong path can never turn CI green by skipping).
#ifndef LORASERVE_TESTS_TESTING_FIXTURES_H_
#define LORASERVE_TESTS_TESTING_FIXTURES_H_

#include <gtest/gtest.h>

#include <string>

namespace loraserve::testing {

// $LORASERVE_SHARED_DIR if set, else <source dir>/../shared. Empty if that folder does not exist.
std::string SharedDir();
// SharedDir() + "/" + relative.
std::string SharedPath(const std::string& relative);
// True when the environment variable CI is "true".
bool RunningInCi();
// A fresh empty temporary directory, removed at process exit.
std::string MakeTempDir();
// The repository's source directory.
std::string SourceDir();

}  // namespace loraserve::testing

#define LORASERVE_REQUIRE_SHARED()                                                          \
  do {                                                                                      \
    if (::loraserve::testing::SharedDir().empty()) {                                        \
      if (::loraserve::testing::RunningInCi()) {                                            \
        FAIL() << "CI=true but the shared fixtures directory (../shared or "                \
                  "$LORASERVE_SHARED_DIR) is missing";                                      \
      }                                                                                     \
      GTEST_SKIP() << "\n*** SKIPPED: ../shared fixtures not found (set "                   \
                      "LORASERVE_SHARED_DIR). This test did NOT run. ***";                  \
    }                                                                                       \
  } while (false)

#endif  // LORASERVE_TESTS_TESTING_FIXTURES_H_
