// Sign-matrix (1-bit) packing and products: bit layout, fast kernel against the scalar reference
// on every compiled SIMD target, reference against the dense product of the unpacked matrix.
#include <hwy/targets.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "ops/dense_matmul.h"
#include "ops/parallel.h"
#include "ops/sign_matmul.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::random_signs;
using testing::random_vector;
using testing::ScopedTarget;

TEST(SignPacking, LayoutAndRoundTrip) {
  EXPECT_EQ(sign_words_per_row(1), 1);
  EXPECT_EQ(sign_words_per_row(64), 1);
  EXPECT_EQ(sign_words_per_row(65), 2);
  // Row 0: columns 0..69 with known signs; row 1: all negative (only padding must stay zero).
  const int64_t cols = 70;
  std::vector<float> values(2 * cols);
  for (int64_t c = 0; c < cols; ++c) values[c] = (c % 3 == 0) ? -1.5f : 2.0f;
  values[1] = 0.0f;     // sign(0) = +1
  values[2] = -0.0f;    // -0.0 == 0, so +1 as well
  values[3] = -1e-30f;  // tiny negative: -1
  values[64] = 0.0f;
  values[66] = -0.0f;
  for (int64_t c = 0; c < cols; ++c) values[cols + c] = -3.0f;
  std::vector<uint64_t> words(2 * sign_words_per_row(cols), ~uint64_t{0});
  pack_signs(values.data(), 2, cols, words.data());

  // Bit (c % 64) of word c / 64, LSB first, 1 = +1.
  uint64_t w0 = 0, w1 = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const bool plus = !(values[c] < 0.0f);
    if (c < 64) {
      w0 |= uint64_t(plus) << c;
    } else {
      w1 |= uint64_t(plus) << (c - 64);
    }
  }
  EXPECT_EQ(words[0], w0);
  EXPECT_EQ(words[1], w1);
  EXPECT_EQ(words[0] & 0xF, 0b0110u);  // columns 0..3: -1.5, 0, -0.0, -1e-30
  EXPECT_EQ(words[1] >> 6, 0u) << "padding bits of row 0 must be zero";
  EXPECT_EQ(words[2], 0u);
  EXPECT_EQ(words[3], 0u) << "row 1 is all -1 and its padding zero";

  std::vector<float> unpacked(2 * cols);
  unpack_signs(SignMatrix{words.data(), 2, cols}, unpacked.data());
  for (int64_t i = 0; i < 2 * cols; ++i)
    ASSERT_EQ(unpacked[i], values[i] < 0.0f ? -1.0f : 1.0f) << "element " << i;

  // Re-packing the unpacked ±1 matrix is bit-exact.
  std::vector<uint64_t> again(words.size(), ~uint64_t{0});
  pack_signs(unpacked.data(), 2, cols, again.data());
  EXPECT_EQ(again, words);
}

TEST(SignPacking, RandomRoundTripIsBitExact) {
  std::mt19937 rng(99);
  for (int64_t cols : {1, 5, 63, 64, 65, 129, 1000}) {
    const int64_t rows = 3;
    const auto words = random_signs(rows, cols, rng);
    const int64_t wpr = sign_words_per_row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      if (cols % 64) {
        EXPECT_EQ(words[r * wpr + wpr - 1] >> (cols % 64), 0u) << "padding, cols " << cols;
      }
    }
    std::vector<float> unpacked(rows * cols);
    unpack_signs(SignMatrix{words.data(), rows, cols}, unpacked.data());
    std::vector<uint64_t> again(words.size());
    pack_signs(unpacked.data(), rows, cols, again.data());
    EXPECT_EQ(again, words) << "cols " << cols;
  }
}

TEST(SignMatmul, ReferenceEqualsDenseProductOfUnpacked) {
  std::mt19937 rng(5);
  for (auto [rows, cols, tokens] :
       {std::tuple<int64_t, int64_t, int64_t>{17, 129, 3}, {8, 1000, 2}, {130, 65, 1}}) {
    const auto words = random_signs(rows, cols, rng);
    const SignMatrix s{words.data(), rows, cols};
    std::vector<float> dense(rows * cols);
    unpack_signs(s, dense.data());
    const auto x = random_vector(tokens * cols, rng);
    std::vector<float> from_signs(tokens * rows), from_dense(tokens * rows);
    sign_matmul_reference(s, x.data(), from_signs.data(), tokens);
    dense_matmul_reference(DenseMatrix{DType::F32, dense.data(), rows, cols}, x.data(),
                           from_dense.data(), tokens);
    // Both sum the same ±x terms in the same order in double (·±1 is exact): identical.
    EXPECT_EQ(from_signs, from_dense) << rows << "x" << cols;
  }
}

class SignMatmulShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

// Random column and row scales for s and a y to accumulate into: the product with every scaling
// and accumulation fused (LittleBit's use).
struct ScaledCase {
  std::vector<float> col_scale, row_scale, y0;
  SignScales scales() const { return {col_scale.data(), row_scale.data(), true}; }
};
ScaledCase scaled_case(const SignMatrix& s, int64_t tokens, std::mt19937& rng) {
  return {random_vector(s.cols, rng), random_vector(s.rows, rng), random_vector(tokens * s.rows, rng)};
}

void expect_matches_reference(const SignMatrix& s, const std::vector<float>& x, int64_t tokens,
                              const std::string& what, const ScaledCase* scaled = nullptr) {
  const SignScales scales = scaled ? scaled->scales() : SignScales{};
  std::vector<float> fast(tokens * s.rows, std::nanf("")), reference(tokens * s.rows);
  if (scaled) fast = reference = scaled->y0;
  sign_matmul(s, x.data(), fast.data(), tokens, scales);
  sign_matmul_reference(s, x.data(), reference.data(), tokens, scales);
  // 2·P − T in fp32 in another order than the double reference: error ~ 1e-7·sqrt(cols)·|x|.
  for (size_t i = 0; i < fast.size(); ++i)
    ASSERT_NEAR(fast[i], reference[i],
                1e-4 * std::sqrt(double(s.cols)) * (1 + std::fabs(reference[i])))
        << what << " element " << i << " (" << s.rows << "x" << s.cols << ", tokens " << tokens
        << ")";
}

TEST_P(SignMatmulShapes, SimdMatchesReferenceOnEveryTarget) {
  const auto [rows, cols, tokens] = GetParam();
  std::mt19937 rng(1234 + rows * 7 + cols * 13 + tokens);
  const auto words = random_signs(rows, cols, rng);
  const auto x = random_vector(tokens * cols, rng);
  const SignMatrix plain{words.data(), rows, cols};
  const auto blocks = sign_blocks(plain);
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    ScopedTarget scoped(target);
    expect_matches_reference(plain, x, tokens, hwy::TargetName(target));
    expect_matches_reference(SignMatrix{words.data(), rows, cols, blocks.data()}, x, tokens,
                             std::string("block layout, ") + hwy::TargetName(target));
    const ScaledCase scaled = scaled_case(plain, tokens, rng);
    expect_matches_reference(plain, x, tokens, std::string("scaled, ") + hwy::TargetName(target),
                             &scaled);
    expect_matches_reference(SignMatrix{words.data(), rows, cols, blocks.data()}, x, tokens,
                             std::string("scaled, block layout, ") + hwy::TargetName(target),
                             &scaled);
  }
}

// The reference's scalings: y + row_scale ⊙ (S·(col_scale ⊙ x)), computed here from the unscaled
// reference product, and the row scale alone without accumulation.
TEST(SignMatmul, ReferenceScalesAndAccumulates) {
  std::mt19937 rng(8);
  const int64_t rows = 9, cols = 70, tokens = 3;
  const auto words = random_signs(rows, cols, rng);
  const SignMatrix s{words.data(), rows, cols};
  const auto x = random_vector(tokens * cols, rng);
  const ScaledCase c = scaled_case(s, tokens, rng);
  std::vector<float> xg(x.size()), plain(tokens * rows), fused = c.y0, row_only(tokens * rows);
  for (int64_t i = 0; i < tokens * cols; ++i) xg[i] = x[i] * c.col_scale[i % cols];
  sign_matmul_reference(s, xg.data(), plain.data(), tokens);
  sign_matmul_reference(s, x.data(), fused.data(), tokens, c.scales());
  sign_matmul_reference(s, x.data(), row_only.data(), tokens, {nullptr, c.row_scale.data(), false});
  std::vector<float> unscaled(tokens * rows);
  sign_matmul_reference(s, x.data(), unscaled.data(), tokens);
  for (int64_t i = 0; i < tokens * rows; ++i) {
    EXPECT_NEAR(fused[i], c.y0[i] + c.row_scale[i % rows] * plain[i],
                1e-5 * (1 + std::fabs(fused[i])));
    EXPECT_NEAR(row_only[i], c.row_scale[i % rows] * unscaled[i], 1e-5 * (1 + std::fabs(unscaled[i])));
  }
}

// sign_matmul_block with the scalings: disjoint row and column blocks, each accumulated into y, add
// up to the whole scaled product.
TEST(SignMatmul, BlocksWithScalesAddUpToTheProduct) {
  std::mt19937 rng(12);
  for (auto [rows, cols, tokens] :
       {std::tuple<int64_t, int64_t, int64_t>{96, 200, 1}, {40, 3000, 2}, {130, 20000, 3}, {70, 5000, 5}}) {
    const auto words = random_signs(rows, cols, rng);
    const auto blocks = sign_blocks(SignMatrix{words.data(), rows, cols});
    const SignMatrix s{words.data(), rows, cols, blocks.data()};
    const auto x = random_vector(tokens * cols, rng);
    const ScaledCase c = scaled_case(s, tokens, rng);
    std::vector<float> reference = c.y0, fast = c.y0;
    sign_matmul_reference(s, x.data(), reference.data(), tokens, c.scales());
    const int64_t row_split = kSignRowAlign * (rows / kSignRowAlign / 2);
    const int64_t col_split = kSignColAlign * (cols / kSignColAlign / 2);
    for (auto [r0, r1] : {std::pair{int64_t{0}, row_split}, {row_split, rows}})
      for (auto [c0, c1] : {std::pair{int64_t{0}, col_split}, {col_split, cols}})
        sign_matmul_block(s, x.data(), fast.data(), tokens, r0, r1, c0, c1, c.scales());
    for (size_t i = 0; i < fast.size(); ++i)
      ASSERT_NEAR(fast[i], reference[i], 1e-4 * std::sqrt(double(cols)) * (1 + std::fabs(reference[i])))
          << rows << "x" << cols << " element " << i;
  }
}

// The block layout holds every row's bits of each 32-column block, 16 rows to a group, zeros past
// the last row.
TEST(SignMatmul, BlockLayoutHoldsEachRowsBitsPerBlock) {
  std::mt19937 rng(11);
  const int64_t rows = 21, cols = 100;  // two row groups (the second mostly padding), 4 blocks
  const auto words = random_signs(rows, cols, rng);
  const auto blocks = sign_blocks(SignMatrix{words.data(), rows, cols});
  ASSERT_EQ(blocks.size(), size_t(2 * 4 * 16));
  for (int64_t r = 0; r < 32; ++r)
    for (int64_t b = 0; b < 4; ++b) {
      uint32_t expected = 0;
      for (int64_t j = 0; j < 32 && r < rows && 32 * b + j < cols; ++j) {
        const int64_t c = 32 * b + j;
        expected |= uint32_t((words[r * 2 + c / 64] >> (c % 64)) & 1) << j;
      }
      EXPECT_EQ(blocks[(r / 16 * 4 + b) * 16 + r % 16], expected) << "row " << r << " block " << b;
    }
}

INSTANTIATE_TEST_SUITE_P(Awkward, SignMatmulShapes,
                         ::testing::Combine(::testing::Values(1, 3, 8, 17, 130),
                                            ::testing::Values(1, 5, 63, 64, 65, 129, 1000),
                                            ::testing::Values(1, 2, 5, 33)));

// Shapes large enough to take every threading path (row/token grid, column split; lookup-table
// and wide kernels, with leftover rows and partial column blocks) with 1, 2 and 3 threads on every
// target, plus all-positive activations (where 2·P − T cancels most).
TEST(SignMatmul, LargeShapesAndThreading) {
  std::mt19937 rng(77);
  struct Shape {
    int64_t rows, cols, tokens;
  };
  const Shape shapes[] = {{8, 40000, 1},  {16, 8192, 1},  {16, 4096, 9},   {4100, 16, 1},
                          {2049, 80, 7},  {1000, 544, 1}, {300, 1030, 2},  {64, 2048, 33},
                          {100, 5000, 1}, {70, 4500, 6},  {130, 20000, 1}, {8, 131101, 1},
                          {4100, 300, 1}};
  const int saved = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    for (const auto& sh : shapes) {
      const auto words = random_signs(sh.rows, sh.cols, rng);
      auto x = random_vector(sh.tokens * sh.cols, rng);
      const auto blocks = sign_blocks(SignMatrix{words.data(), sh.rows, sh.cols});
      for (const uint32_t* layout : {static_cast<const uint32_t*>(nullptr), blocks.data()}) {
        const SignMatrix s{words.data(), sh.rows, sh.cols, layout};
        for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
          ScopedTarget scoped(target);
          const std::string what = std::string(hwy::TargetName(target)) + ", threads " +
                                   std::to_string(threads) + (layout ? ", block layout" : "");
          expect_matches_reference(s, x, sh.tokens, what);
          auto positive = x;
          for (auto& v : positive) v = std::fabs(v);
          expect_matches_reference(s, positive, sh.tokens, "positive x, " + what);
          const ScaledCase scaled = scaled_case(s, sh.tokens, rng);
          expect_matches_reference(s, x, sh.tokens, "scaled, " + what, &scaled);
        }
      }
    }
  }
  set_num_threads(saved);
}

// The weighted sum of rows (LittleBit's embedding-row decode): the reference equals the dense
// product with the unpacked matrix, and the SIMD kernel the reference on every target, at sizes
// around the 32- and 128-column tiles; y past `cols` is never written (exact-size y under ASan).
TEST(SignCombineRows, SimdMatchesReferenceOnEveryTarget) {
  std::mt19937 rng(21);
  for (const int64_t rows : {1, 3, 17, 130, 536})
    for (const int64_t cols : {1, 5, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 1000, 2048}) {
      const auto words = random_signs(rows, cols, rng);
      const auto coeffs = random_vector(rows, rng);
      const SignMatrix s{words.data(), rows, cols};
      std::vector<float> reference(cols), unpacked(rows * cols);
      sign_combine_rows_reference(s, coeffs.data(), reference.data());
      unpack_signs(s, unpacked.data());
      for (int64_t c = 0; c < cols; ++c) {
        double sum = 0;
        for (int64_t r = 0; r < rows; ++r) sum += double(coeffs[r]) * unpacked[r * cols + c];
        ASSERT_FLOAT_EQ(reference[c], float(sum)) << rows << "x" << cols << " column " << c;
      }
      for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
        ScopedTarget scoped(target);
        std::vector<float> fast(cols, std::nanf(""));
        sign_combine_rows(s, coeffs.data(), fast.data());
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_NEAR(fast[c], reference[c],
                      1e-4 * std::sqrt(double(rows)) * (1 + std::fabs(reference[c])))
              << hwy::TargetName(target) << " " << rows << "x" << cols << " column " << c;
      }
    }
}

TEST(SignMatmul, PaddingBitsAndEmptyShapes) {
  // Row bits past `cols` must be zero by contract; the kernels must not read x past cols either
  // (x is sized exactly; ASan would catch an overrun).
  std::mt19937 rng(3);
  const int64_t rows = 40, cols = 33;
  const auto words = random_signs(rows, cols, rng);
  const auto x = random_vector(cols, rng);
  expect_matches_reference(SignMatrix{words.data(), rows, cols}, x, 1, "padding");

  std::vector<float> y(4, 1.0f);
  const float row_scale[4] = {2, 2, 2, 2};
  sign_matmul(SignMatrix{nullptr, 4, 0}, nullptr, y.data(), 1, {nullptr, row_scale, true});
  EXPECT_EQ(y, std::vector<float>(4, 1.0f)) << "an empty sum accumulated leaves y";
  sign_matmul(SignMatrix{nullptr, 4, 0}, nullptr, y.data(), 1);  // empty sum
  EXPECT_EQ(y, std::vector<float>(4, 0.0f));
  sign_matmul(SignMatrix{words.data(), 0, cols}, x.data(), nullptr, 1);  // nothing to do
  sign_matmul(SignMatrix{words.data(), rows, cols}, x.data(), nullptr, 0);
}

}  // namespace
}  // namespace subbit
