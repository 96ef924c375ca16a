#include "core/npy.h"

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(NpyTest, WritesVersion1LittleEndianFloat32CArrays) {
  testing::TempDir dir("npy");
  const std::string path = dir.path() + "/a.npy";
  const std::vector<float> data = {1, -2, 3.5f, 0, 1e-3f, 7};
  ASSERT_TRUE(WriteNpyF32(path, {2, 3}, data.data()).ok());
  const std::string bytes = ReadBytes(path);
  ASSERT_GT(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(bytes[6], 1);
  EXPECT_EQ(bytes[7], 0);
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  const std::string header = bytes.substr(10, header_len);
  EXPECT_EQ(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0), 0u);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(bytes.size(), 10 + header_len + data.size() * 4);

  absl::StatusOr<NpyArray> back = ReadNpyF32(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, (Shape{2, 3}));
  EXPECT_EQ(back->data, data);
}

TEST(NpyTest, OneDimensionalShapeHasTrailingComma) {
  testing::TempDir dir("npy");
  const std::string path = dir.path() + "/v.npy";
  const std::vector<float> data = {1, 2, 3, 4, 5};
  ASSERT_TRUE(WriteNpyF32(path, {5}, data.data()).ok());
  EXPECT_NE(ReadBytes(path).find("'shape': (5,)"), std::string::npos);
  absl::StatusOr<NpyArray> back = ReadNpyF32(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->shape, (Shape{5}));
}

TEST(NpyTest, RejectsOtherFiles) {
  testing::TempDir dir("npy");
  const std::string path = dir.path() + "/bad.npy";
  std::ofstream(path) << "not an array";
  EXPECT_EQ(ReadNpyF32(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadNpyF32(dir.path() + "/missing.npy").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(WriteNpyF32(dir.path() + "/no/such/dir.npy", {1}, nullptr).ok());
}

}  // namespace
}  // namespace dsv4
