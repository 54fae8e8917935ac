#include "core/io/json_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/io/file_util.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

TEST(JsonFileTest, ReadsObjectsAndTypedFields) {
  const std::string path = testing::MakeTempDir() + "/c.json";
  ASSERT_OK(WriteFileAtomically(path, R"({"r": 8, "alpha": 16.0, "rs": true, "name": "x", "n": null})"));
  ASSERT_OK_AND_ASSIGN(Json j, ReadJsonFile(path));
  EXPECT_EQ(*JsonInt(j, "r", 0, path), 8);
  EXPECT_EQ(*JsonInt(j, "alpha", 0, path), 16);  // integral float accepted as int
  EXPECT_DOUBLE_EQ(*JsonDouble(j, "r", 0, path), 8.0);
  EXPECT_TRUE(*JsonBool(j, "rs", false, path));
  EXPECT_EQ(*JsonString(j, "name", "", path), "x");
  EXPECT_EQ(*JsonInt(j, "missing", 42, path), 42);
  EXPECT_EQ(*JsonInt(j, "n", 7, path), 7);  // null = missing
  EXPECT_THAT(JsonInt(j, "name", 0, path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"name\" must be an integer")));
  EXPECT_THAT(JsonBool(j, "r", false, path), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Found by config_fuzz (UBSan: a double outside int64's range was cast to int64).
TEST(JsonFileTest, FloatsOutsideTheIntegerRangeAreRefusedNotCast) {
  ASSERT_OK_AND_ASSIGN(Json j, ParseJson(R"({"a": 2.2e102, "b": -1e300, "c": 9.3e18, "d": 2.5, "e": -4.0})", "t"));
  for (const char* key : {"a", "b", "c", "d"}) {
    EXPECT_THAT(JsonInt(j, key, 0, "t"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("an integer")))
        << key;
  }
  EXPECT_EQ(*JsonInt(j, "e", 0, "t"), -4);
}

TEST(JsonFileTest, BadFilesGiveClearErrors) {
  const std::string dir = testing::MakeTempDir();
  EXPECT_THAT(ReadJsonFile(dir + "/missing.json"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(WriteFileAtomically(dir + "/bad.json", "{\"a\": "));
  EXPECT_THAT(ReadJsonFile(dir + "/bad.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("invalid JSON")));
  ASSERT_OK(WriteFileAtomically(dir + "/arr.json", "[1]"));
  EXPECT_THAT(ReadJsonFile(dir + "/arr.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("object")));
}

TEST(JsonFileTest, ReadsTheRealModelConfig) {
  LORASERVE_REQUIRE_SHARED();
  const std::string path = testing::SharedPath("fixtures/models/stories260K/config.json");
  ASSERT_OK_AND_ASSIGN(Json j, ReadJsonFile(path));
  EXPECT_EQ(*JsonString(j, "model_type", "", path), "llama");
  EXPECT_EQ(*JsonInt(j, "hidden_size", 0, path), 64);
  EXPECT_TRUE(*JsonBool(j, "tie_word_embeddings", false, path));
}

}  // namespace
}  // namespace loraserve::core
