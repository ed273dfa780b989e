// The randomized truncated SVD against the exact one.
#include <gtest/gtest.h>

#include "compress/littlebit.h"
#include "compress/truncated_svd.h"

namespace subbit::compress {
namespace {

// ||W_r||² / ||W||²: the share of the matrix's energy the top-r triples capture.
double captured_energy(const TruncatedSvd& svd, const torch::Tensor& w) {
  return svd.s.pow(2).sum().item<double>() / w.pow(2).sum().item<double>();
}

torch::Tensor decaying_spectrum(int64_t rows, int64_t cols, double scale) {
  const int64_t n = std::min(rows, cols);
  return torch::matmul(torch::randn({rows, n}) * torch::exp(-torch::arange(n) / scale), torch::randn({n, cols}));
}

const TruncatedSvdOptions kRandomized{.randomized = true};

TEST(TruncatedSvd, ExactByDefault) {
  torch::manual_seed(3);
  const torch::Tensor w = torch::randn({64, 256});
  EXPECT_TRUE(torch::equal(truncated_svd(w, 8).s, exact_truncated_svd(w, 8).s));
}

// Bounds below are what the defaults (oversample 16, two subspace iterations) achieve.
TEST(TruncatedSvd, MatchesExactOnADecayingSpectrum) {
  torch::manual_seed(0);
  const torch::Tensor w = decaying_spectrum(300, 500, 30.0);
  const TruncatedSvd exact = exact_truncated_svd(w, 40);
  const TruncatedSvd fast = truncated_svd(w, 40, kRandomized);
  ASSERT_EQ(fast.u.sizes(), exact.u.sizes());
  ASSERT_EQ(fast.vh.sizes(), exact.vh.sizes());
  EXPECT_LT(((fast.s - exact.s).abs() / exact.s).max().item<double>(), 5e-3);
  EXPECT_NEAR(captured_energy(fast, w), captured_energy(exact, w), 2e-4);
  // Orthonormal factors, and the same rank-r reconstruction.
  EXPECT_LT((torch::matmul(fast.u.t(), fast.u) - torch::eye(40)).abs().max().item<double>(), 1e-4);
  const torch::Tensor a = torch::matmul(fast.u * fast.s, fast.vh), b = torch::matmul(exact.u * exact.s, exact.vh);
  EXPECT_LT((a - b).norm().item<double>() / b.norm().item<double>(), 3e-2);
}

TEST(TruncatedSvd, IsDeterministicAndFallsBackToExactNearFullRank) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({64, 96});
  const TruncatedSvd a = truncated_svd(w, 8, kRandomized), b = truncated_svd(w, 8, kRandomized);
  EXPECT_TRUE(torch::equal(a.u, b.u) && torch::equal(a.s, b.s) && torch::equal(a.vh, b.vh));
  const TruncatedSvd near_full = truncated_svd(w, 40, kRandomized);  // 40 + 16 >= 0.5 * 64: exact
  const TruncatedSvd exact = exact_truncated_svd(w, 40);
  EXPECT_TRUE(torch::equal(near_full.s, exact.s));
}

TEST(TruncatedSvd, FlatSpectrumCapturesMostOfTheTopEnergy) {
  // Gaussian weights (random checkpoints) have flat spectra: the hardest case for a range finder.
  torch::manual_seed(2);
  const torch::Tensor w = torch::randn({512, 1024});
  const double exact = captured_energy(exact_truncated_svd(w, 64), w);
  const double fast = captured_energy(truncated_svd(w, 64, kRandomized), w);
  EXPECT_LE(fast, exact * (1 + 1e-6));
  EXPECT_GT(fast, 0.9 * exact);  // 0.94 measured
}

}  // namespace
}  // namespace subbit::compress
