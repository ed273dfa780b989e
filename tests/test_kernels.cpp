// Every fast kernel against its scalar reference on random inputs of awkward sizes.
#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <random>

#include "ops/dense_matmul.h"
#include "ops/vector_ops.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::random_vector;

class DenseMatmulShapes
    : public ::testing::TestWithParam<std::tuple<DType, int64_t, int64_t, int64_t>> {};

TEST_P(DenseMatmulShapes, SimdMatchesReferenceOnEveryTarget) {
  const auto [dtype, n_out, n_in, tokens] = GetParam();
  std::mt19937 rng(1234);
  const auto w_f32 = random_vector(n_out * n_in, rng);
  std::vector<uint16_t> w_bf16(w_f32.size());
  for (size_t i = 0; i < w_f32.size(); ++i) w_bf16[i] = f32_to_bf16(w_f32[i]);
  const DenseMatrix w{dtype,
                      dtype == DType::F32 ? static_cast<const void*>(w_f32.data()) : w_bf16.data(),
                      n_out, n_in};
  const auto x = random_vector(tokens * n_in, rng);
  std::vector<float> reference(tokens * n_out);
  dense_matmul_reference(w, x.data(), reference.data(), tokens);
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    testing::ScopedTarget scoped(target);
    std::vector<float> fast(tokens * n_out, std::nanf(""));
    dense_matmul(w, x.data(), fast.data(), tokens);
    // fp32 accumulation in a different order: relative error ~ 1e-6 * sqrt(n_in).
    for (size_t i = 0; i < fast.size(); ++i)
      ASSERT_NEAR(fast[i], reference[i],
                  1e-4 * std::sqrt(double(n_in)) * (1 + std::fabs(reference[i])))
          << hwy::TargetName(target) << " element " << i;
  }
}

// The reference itself, against products summed here from the weights as stored (bf16 widened
// by hand), so a wrong reference cannot hide a wrong kernel.
TEST(DenseMatmulReference, EqualsTheProductOfTheStoredWeights) {
  std::mt19937 rng(77);
  const int64_t n_out = 6, n_in = 37, tokens = 3;
  const auto w_f32 = random_vector(n_out * n_in, rng);
  const auto x = random_vector(tokens * n_in, rng);
  std::vector<uint16_t> w_bf16(w_f32.size());
  std::vector<float> widened(w_f32.size());
  for (size_t i = 0; i < w_f32.size(); ++i) {
    w_bf16[i] = f32_to_bf16(w_f32[i]);
    const uint32_t bits = uint32_t(w_bf16[i]) << 16;
    std::memcpy(&widened[i], &bits, sizeof(float));
  }
  for (DType dtype : {DType::F32, DType::BF16}) {
    const std::vector<float>& values = dtype == DType::F32 ? w_f32 : widened;
    const DenseMatrix w{
        dtype, dtype == DType::F32 ? static_cast<const void*>(w_f32.data()) : w_bf16.data(), n_out,
        n_in};
    std::vector<float> y(tokens * n_out);
    dense_matmul_reference(w, x.data(), y.data(), tokens);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t o = 0; o < n_out; ++o) {
        double sum = 0;
        for (int64_t i = 0; i < n_in; ++i) sum += double(values[o * n_in + i]) * x[t * n_in + i];
        EXPECT_EQ(y[t * n_out + o], float(sum))
            << dtype_name(dtype) << " token " << t << " output " << o;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Awkward, DenseMatmulShapes,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16),
                                            ::testing::Values(1, 3, 7, 33, 130),
                                            // 4099: past the inputs one token streams a row
                                            // at a time (4096), so four rows at a time.
                                            ::testing::Values(1, 5, 16, 67, 100, 259, 4099),
                                            ::testing::Values(1, 2, 5, 70)));

TEST(VectorOps, DotAndAxpyMatchScalar) {
  std::mt19937 rng(7);
  for (int64_t n : {0, 1, 7, 15, 16, 17, 33, 100, 1027}) {
    const auto a = random_vector(n, rng), b = random_vector(n, rng);
    double expected = 0;
    for (int64_t i = 0; i < n; ++i) expected += double(a[i]) * b[i];
    EXPECT_NEAR(dot(a.data(), b.data(), n), expected, 1e-4 * (1 + std::sqrt(double(n))));
    auto y = b;
    axpy(0.5f, a.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], b[i] + 0.5f * a[i]);
  }
}

TEST(VectorOps, SoftmaxSumsToOneAndIsStable) {
  std::vector<float> x = {1000.0f, 1001.0f, 999.0f};
  softmax(x.data(), 3);
  EXPECT_NEAR(x[0] + x[1] + x[2], 1.0f, 1e-6);
  EXPECT_GT(x[1], x[0]);
}

TEST(VectorOps, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(3.140625f)), 3.140625f);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
}

}  // namespace
}  // namespace subbit
