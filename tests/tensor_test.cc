#include "core/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace dsv4 {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

std::vector<float> Iota(int64_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 0.0f);
  return v;
}

TEST(ShapeTest, ToStringAndNumElements) {
  EXPECT_EQ(ShapeToString({2, 3}), "[2, 3]");
  EXPECT_EQ(ShapeToString({}), "[]");
  EXPECT_EQ(NumElements({2, 3, 4}), 24);
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({5, 0}), 0);
}

TEST(TensorTest, DefaultIsEmpty) {
  Tensor t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.rank(), 0);
  EXPECT_EQ(t.data(), nullptr);
  EXPECT_TRUE(t.Clone().empty());
  EXPECT_TRUE(t.ToVector().empty());
}

TEST(TensorTest, ZeroFilledAndFilled) {
  Tensor z({2, 3});
  EXPECT_FALSE(z.empty());
  EXPECT_THAT(z.shape(), ElementsAre(2, 3));
  EXPECT_THAT(z.strides(), ElementsAre(3, 1));
  EXPECT_THAT(z.ToVector(), ElementsAreArray(std::vector<float>(6, 0.0f)));
  Tensor f({4}, 2.5f);
  EXPECT_THAT(f.ToVector(), ElementsAre(2.5f, 2.5f, 2.5f, 2.5f));
  EXPECT_TRUE(f.is_contiguous());
}

TEST(TensorTest, FromVectorAndAt) {
  Tensor t = Tensor::FromVector({2, 3, 4}, Iota(24));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.dim(-3), 2);
  EXPECT_THAT(t.strides(), ElementsAre(12, 4, 1));
  EXPECT_EQ(t.at({1, 2, 3}), 23.0f);
  EXPECT_EQ(t.at({0, 1, 2}), 6.0f);
  t.at({1, 0, 0}) = -1.0f;
  EXPECT_EQ(t.data()[12], -1.0f);
}

TEST(TensorTest, EmptyVectorGivesZeroSizedTensor) {
  Tensor t = Tensor::FromVector({0, 3}, {});
  EXPECT_FALSE(t.empty());
  EXPECT_EQ(t.numel(), 0);
  EXPECT_TRUE(t.ToVector().empty());
  EXPECT_EQ(t.Clone().numel(), 0);
}

TEST(TensorTest, CopiesShareStorageClonesDoNot) {
  Tensor a({3}, 1.0f);
  Tensor b = a;
  Tensor c = a.Clone();
  b.at({1}) = 7.0f;
  EXPECT_EQ(a.at({1}), 7.0f);
  EXPECT_EQ(c.at({1}), 1.0f);
  EXPECT_NE(c.data(), a.data());
}

TEST(TensorTest, ReshapeSharesStorageAndInfersOneDim) {
  Tensor t = Tensor::FromVector({2, 6}, Iota(12));
  Tensor r = t.Reshape({3, -1});
  EXPECT_THAT(r.shape(), ElementsAre(3, 4));
  EXPECT_THAT(r.strides(), ElementsAre(4, 1));
  EXPECT_EQ(r.data(), t.data());
  EXPECT_EQ(r.at({2, 1}), 9.0f);
  EXPECT_THAT(t.Reshape({12}).shape(), ElementsAre(12));
  EXPECT_THAT(t.Reshape({2, 1, 6}).shape(), ElementsAre(2, 1, 6));
}

TEST(TensorTest, SliceIsOffsetView) {
  Tensor t = Tensor::FromVector({4, 3}, Iota(12));
  Tensor rows = t.Slice(0, 1, 3);
  EXPECT_THAT(rows.shape(), ElementsAre(2, 3));
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(rows.data(), t.data() + 3);
  EXPECT_THAT(rows.ToVector(), ElementsAre(3, 4, 5, 6, 7, 8));

  Tensor cols = t.Slice(-1, 1, 3);
  EXPECT_THAT(cols.shape(), ElementsAre(4, 2));
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_THAT(cols.ToVector(), ElementsAre(1, 2, 4, 5, 7, 8, 10, 11));
  cols.at({3, 0}) = 100.0f;
  EXPECT_EQ(t.at({3, 1}), 100.0f);

  EXPECT_EQ(t.Slice(0, 2, 2).numel(), 0);
}

TEST(TensorTest, SelectDropsAxis) {
  Tensor t = Tensor::FromVector({2, 3, 4}, Iota(24));
  Tensor s = t.Select(1, 2);
  EXPECT_THAT(s.shape(), ElementsAre(2, 4));
  EXPECT_THAT(s.ToVector(), ElementsAre(8, 9, 10, 11, 20, 21, 22, 23));
  Tensor row = t.Select(0, 1).Select(0, 0);
  EXPECT_THAT(row.shape(), ElementsAre(4));
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_EQ(row.data(), t.data() + 12);
  Tensor scalar = row.Select(0, 3);
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.at({}), 15.0f);
  EXPECT_THAT(scalar.Clone().ToVector(), ElementsAre(15.0f));
}

TEST(TensorTest, TransposeAndContiguous) {
  Tensor t = Tensor::FromVector({2, 3}, Iota(6));
  Tensor tt = t.Transpose(0, 1);
  EXPECT_THAT(tt.shape(), ElementsAre(3, 2));
  EXPECT_THAT(tt.strides(), ElementsAre(1, 3));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.at({2, 1}), 5.0f);
  EXPECT_THAT(tt.ToVector(), ElementsAre(0, 3, 1, 4, 2, 5));
  Tensor packed = tt.Contiguous();
  EXPECT_TRUE(packed.is_contiguous());
  EXPECT_NE(packed.data(), t.data());
  EXPECT_THAT(packed.ToVector(), ElementsAre(0, 3, 1, 4, 2, 5));
  // Already contiguous: Contiguous() is the same view.
  EXPECT_EQ(t.Contiguous().data(), t.data());
}

TEST(TensorTest, CloneOfStridedRank4View) {
  // Non-contiguous in several axes at once, against index arithmetic.
  Tensor t = Tensor::FromVector({3, 4, 5, 6}, Iota(360));
  Tensor v = t.Transpose(0, 2).Slice(1, 1, 3).Slice(3, 2, 5).Transpose(1, 3);
  ASSERT_THAT(v.shape(), ElementsAre(5, 3, 3, 2));
  std::vector<float> expected;
  for (int64_t a = 0; a < 5; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t d = 0; d < 2; ++d) {
          // v[a, b, c, d] = t[c, 1 + d, a, 2 + b]
          expected.push_back(static_cast<float>(((c * 4 + 1 + d) * 5 + a) * 6 + 2 + b));
        }
  EXPECT_THAT(v.Clone().ToVector(), ElementsAreArray(expected));
  EXPECT_THAT(v.ToVector(), ElementsAreArray(expected));
  EXPECT_EQ(v.at({4, 2, 1, 1}), t.at({1, 2, 4, 4}));
}

TEST(TensorTest, SizeOneDimsDoNotBreakContiguity) {
  Tensor t = Tensor::FromVector({1, 4}, Iota(4));
  EXPECT_TRUE(t.Transpose(0, 1).is_contiguous());
  EXPECT_TRUE(t.Transpose(0, 1).Reshape({2, 2}).is_contiguous());
}

using TensorDeathTest = ::testing::Test;

TEST(TensorDeathTest, BadAxesAndIndicesAbort) {
  Tensor t({2, 3});
  EXPECT_DEATH(t.dim(2), "axis 2 out of range for rank 2");
  EXPECT_DEATH(t.dim(-3), "axis -3 out of range");
  EXPECT_DEATH(t.at({2, 0}), "index 2 out of range on axis 0");
  EXPECT_DEATH(t.at({0}), "index has 1 entries");
  EXPECT_DEATH(t.Slice(1, 2, 4), "slice \\[2, 4\\) out of range");
  EXPECT_DEATH(t.Select(0, -1), "index -1 out of range");
  EXPECT_DEATH(t.Transpose(0, 5), "axis 5 out of range");
  EXPECT_DEATH(t.Reshape({4, 2}), "cannot reshape \\[2, 3\\] to \\[4, 2\\]");
  EXPECT_DEATH(t.Reshape({-1, -1}), "more than one -1");
  EXPECT_DEATH(t.Transpose(0, 1).Reshape({6}), "non-contiguous");
  EXPECT_DEATH(Tensor::FromVector({2, 2}, {1, 2, 3}), "needs 4 values, got 3");
  EXPECT_DEATH(Tensor({-1, 2}), "negative dimension");
}

}  // namespace
}  // namespace dsv4
