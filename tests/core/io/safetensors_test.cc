// Safetensors reader/writer. The byte vectors below are written by hand (not by our writer), so a
// writer bug and a reader bug cannot cancel out.
#include "core/io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "core/io/file_util.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve::core {
namespace {

using ::loraserve::testing::IsOk;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

// 8-byte little-endian length + header + data, assembled by hand.
std::string File(const std::string& header, const std::string& data, int64_t len_override = -1) {
  uint64_t len = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Parse(const std::string& bytes) {
  return SafetensorsFile::FromBytes(bytes, "test.safetensors");
}

TEST(SafetensorsReaderTest, ReadsF16Bf16I64WithMetadataAndAnyOrder) {
  // Tensors listed in the header out of name order and out of offset order.
  const std::string header =
      R"({"z_i64":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},)"
      R"("__metadata__":{"format":"pt"},)"
      R"("a_f16":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
      R"("m_bf16":{"dtype":"BF16","shape":[1,2],"data_offsets":[4,8]}})";
  const std::string data = Bytes({0x00, 0x3c, 0x00, 0xc0,    // F16 1.0, -2.0
                                  0x80, 0x3f, 0x40, 0x40,    // BF16 1.0, 3.0
                                  0x05, 0, 0, 0, 0, 0, 0, 0,  // I64 5
                                  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});  // I64 -1
  ASSERT_OK_AND_ASSIGN(auto file, Parse(File(header, data)));
  ASSERT_EQ(file->entries().size(), 3u);
  EXPECT_EQ(file->entries()[0].name, "a_f16");
  EXPECT_EQ(file->entries()[1].name, "m_bf16");
  EXPECT_EQ(file->entries()[2].name, "z_i64");
  EXPECT_EQ(file->metadata().at("format"), "pt");

  const SafetensorsEntry* f16 = file->Find("a_f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, DType::kF16);
  EXPECT_EQ(f16->shape, std::vector<int64_t>({2}));
  auto f16_bytes = file->Bytes(*f16);
  EXPECT_EQ(std::string(f16_bytes.begin(), f16_bytes.end()), Bytes({0x00, 0x3c, 0x00, 0xc0}));

  const SafetensorsEntry* bf16 = file->Find("m_bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, DType::kBF16);
  EXPECT_EQ(bf16->shape, std::vector<int64_t>({1, 2}));

  const SafetensorsEntry* i64 = file->Find("z_i64");
  ASSERT_NE(i64, nullptr);
  EXPECT_EQ(i64->dtype, DType::kI64);
  int64_t values[2];
  std::memcpy(values, file->Bytes(*i64).data(), sizeof(values));
  EXPECT_EQ(values[0], 5);
  EXPECT_EQ(values[1], -1);
  EXPECT_EQ(file->Find("missing"), nullptr);
}

TEST(SafetensorsReaderTest, PaddedHeaderNoMetadataAndEmptyTensors) {
  std::string header = R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                       R"("e":{"dtype":"F32","shape":[0,4],"data_offsets":[3,3]}})";
  header.append(7, ' ');
  ASSERT_OK_AND_ASSIGN(auto file, Parse(File(header, "abc")));
  EXPECT_TRUE(file->metadata().empty());
  ASSERT_NE(file->Find("e"), nullptr);
  EXPECT_EQ(file->Find("e")->NumElements(), 0);
  EXPECT_EQ(file->Find("x")->dtype, DType::kU8);
}

TEST(SafetensorsReaderTest, AcceptsEveryListedDtype) {
  for (const char* name : {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}) {
    ASSERT_OK_AND_ASSIGN(DType d, ParseDType(name));
    const size_t size = DTypeSize(d);
    const std::string header = std::string(R"({"t":{"dtype":")") + name +
                               R"(","shape":[2],"data_offsets":[0,)" +
                               std::to_string(2 * size) + "]}}";
    EXPECT_THAT(Parse(File(header, std::string(2 * size, '\0'))), IsOk()) << name;
    EXPECT_EQ(DTypeName(d), name);
  }
}

struct MalformedCase {
  const char* label;
  std::string bytes;
  const char* message;
};

TEST(SafetensorsReaderTest, MalformedFilesGiveInvalidArgumentNamingTheProblem) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::vector<MalformedCase> cases = {
      {"empty file", "", "truncated"},
      {"shorter than the length prefix", Bytes({1, 0, 0}), "truncated"},
      {"header length past end of file", File("{}", "", 1000), "runs past the end"},
      {"header length over cap", File("{}", "", int64_t{1} << 40), "exceeds the cap"},
      {"zero header length", File("", ""), "empty JSON header"},
      {"invalid JSON", File(R"({"a": {"dtype": )", ""), "invalid JSON"},
      {"header not an object", File("[1,2]", ""), "not an object"},
      {"unknown dtype",
       File(R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
       "unknown dtype"},
      {"missing dtype", File(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
       "dtype"},
      {"negative shape",
       File(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')),
       "shape"},
      {"shape/byte-size mismatch",
       File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0')),
       "shape/byte-size mismatch"},
      {"offsets outside the data",
       File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(4, '\0')),
       "outside the data section"},
      {"offsets out of order (begin > end)",
       File(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", std::string(4, '\0')),
       "out of order"},
      {"overlapping tensors",
       File("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
            std::string(6, '\0')),
       "overlap"},
      {"gap between tensors",
       File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')),
       "gap"},
      {"trailing bytes", File("{" + ok_entry + "}", std::string(6, '\0')), "trailing bytes"},
      {"bad data_offsets",
       File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')),
       "data_offsets"},
      {"metadata value not a string",
       File(R"({"__metadata__":{"k":1},)" + ok_entry + "}", std::string(4, '\0')),
       "__metadata__"},
  };
  for (const MalformedCase& c : cases) {
    EXPECT_THAT(Parse(c.bytes),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.label;
  }
}

TEST(SafetensorsReaderTest, OpenReportsMissingFileAsNotFound) {
  EXPECT_THAT(SafetensorsFile::Open("/nonexistent/x.safetensors"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(SafetensorsReaderTest, OpenMapsAFileFromDisk) {
  const std::string dir = testing::MakeTempDir();
  const std::string path = dir + "/hand.safetensors";
  const std::string bytes =
      File(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", Bytes({0x80, 0x3f, 0, 0xc0}));
  ASSERT_OK(WriteFileAtomically(path, bytes));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->path(), path);
  ASSERT_NE(file->Find("a"), nullptr);
  auto b = file->Bytes(*file->Find("a"));
  EXPECT_EQ(std::string(b.begin(), b.end()), Bytes({0x80, 0x3f, 0, 0xc0}));
  // A truncated copy of the same file fails cleanly.
  ASSERT_OK(WriteFileAtomically(path, bytes.substr(0, bytes.size() - 1)));
  EXPECT_THAT(SafetensorsFile::Open(path), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SafetensorsWriterTest, RoundTripsAndPadsHeader) {
  const std::string f32 = Bytes({0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0});
  const std::string i32 = Bytes({7, 0, 0, 0});
  std::vector<SafetensorsTensor> tensors = {
      {"weight", DType::kF32, {2}, f32},
      {"count", DType::kI32, {1, 1}, i32},
  };
  ASSERT_OK_AND_ASSIGN(std::string bytes, SerializeSafetensors(tensors, {{"format", "pt"}}));
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  ASSERT_OK_AND_ASSIGN(auto file, Parse(bytes));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_NE(file->Find("weight"), nullptr);
  auto w = file->Bytes(*file->Find("weight"));
  EXPECT_EQ(std::string(w.begin(), w.end()), f32);
  EXPECT_EQ(file->Find("count")->shape, std::vector<int64_t>({1, 1}));
  auto c = file->Bytes(*file->Find("count"));
  EXPECT_EQ(std::string(c.begin(), c.end()), i32);
}

TEST(SafetensorsWriterTest, RejectsInconsistentInput) {
  const std::string four(4, '\0');
  EXPECT_THAT(SerializeSafetensors({{"a", DType::kF32, {2}, four}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bytes given")));
  EXPECT_THAT(SerializeSafetensors({{"a", DType::kF32, {1}, four}, {"a", DType::kF32, {1}, four}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate")));
  EXPECT_THAT(SerializeSafetensors({{"__metadata__", DType::kF32, {1}, four}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SafetensorsWriterTest, WritesAtomicallyToDisk) {
  const std::string dir = testing::MakeTempDir();
  const std::string path = dir + "/w.safetensors";
  ASSERT_OK(WriteSafetensors(path, {{"x", DType::kU8, {3}, "xyz"}}));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  auto b = file->Bytes(*file->Find("x"));
  EXPECT_EQ(std::string(b.begin(), b.end()), "xyz");
  EXPECT_THAT(WriteSafetensors("/nonexistent-dir/w.safetensors", {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace loraserve::core
