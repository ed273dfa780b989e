// The randomized truncated SVD against the exact one.
#include <gtest/gtest.h>

#include "compress/littlebit.h"
#include "compress/truncated_svd.h"
#include "formats/littlebit.h"
#include "model/loader.h"
#include "model/tensors.h"
#include "test_support.h"

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

TEST(TruncatedSvd, MatchesExactOnADecayingSpectrum) {
  torch::manual_seed(0);
  const torch::Tensor w = decaying_spectrum(300, 500, 30.0);
  const TruncatedSvd exact = exact_truncated_svd(w, 40);
  const TruncatedSvd fast = truncated_svd(w, 40);
  ASSERT_EQ(fast.u.sizes(), exact.u.sizes());
  ASSERT_EQ(fast.vh.sizes(), exact.vh.sizes());
  EXPECT_LT(((fast.s - exact.s).abs() / exact.s).max().item<double>(), 1e-3);
  EXPECT_NEAR(captured_energy(fast, w), captured_energy(exact, w), 1e-5);
  // Orthonormal factors, and the same rank-r reconstruction.
  EXPECT_LT((torch::matmul(fast.u.t(), fast.u) - torch::eye(40)).abs().max().item<double>(), 1e-4);
  const torch::Tensor a = torch::matmul(fast.u * fast.s, fast.vh), b = torch::matmul(exact.u * exact.s, exact.vh);
  EXPECT_LT((a - b).norm().item<double>() / b.norm().item<double>(), 1e-3);
}

TEST(TruncatedSvd, IsDeterministicAndFallsBackToExactNearFullRank) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({64, 96});
  const TruncatedSvd a = truncated_svd(w, 8), b = truncated_svd(w, 8);
  EXPECT_TRUE(torch::equal(a.u, b.u) && torch::equal(a.s, b.s) && torch::equal(a.vh, b.vh));
  const TruncatedSvd near_full = truncated_svd(w, 40);  // 40 + 16 >= 0.5 * 64: exact
  const TruncatedSvd exact = exact_truncated_svd(w, 40);
  EXPECT_TRUE(torch::equal(near_full.s, exact.s));
}

TEST(TruncatedSvd, FlatSpectrumStillCapturesAlmostAllOfTheTopEnergy) {
  // Gaussian weights (random checkpoints) have flat spectra: the hardest case for a range finder.
  torch::manual_seed(2);
  const torch::Tensor w = torch::randn({512, 1024});
  const double exact = captured_energy(exact_truncated_svd(w, 64), w);
  const double fast = captured_energy(truncated_svd(w, 64), w);
  EXPECT_LE(fast, exact * (1 + 1e-6));
  EXPECT_GT(fast, 0.98 * exact);
}

// The acceptance measure on a trained model: every linear layer of sb-30m at the ranks of
// LittleBit 0.1 / 0.55 / 1.0 bpw keeps its top-r energy within 0.5% of the exact SVD's.
TEST(TruncatedSvd, Sb30mEveryLayerWithinHalfAPercentOfExactEnergy) {
  const auto dir = testing::shared_dir() / "models" / "sb-30m";
  SKIP_UNLESS_EXISTS(dir / "config.json");
  ModelBundle bundle = load_model(dir);
  const LlamaConfig& c = bundle.model->config();
  double worst = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const torch::Tensor w = dense_weight(*bundle.model->weights().layers[l].linear[i]);
      for (double bpw : {0.1, 0.55, 1.0}) {
        const int64_t rank = littlebit_rank_for_bpw(w.size(1), w.size(0), bpw, 2, 8);
        const double exact = captured_energy(exact_truncated_svd(w, rank), w);
        const double fast = captured_energy(truncated_svd(w, rank), w);
        worst = std::max(worst, 1 - fast / exact);
        EXPECT_GT(fast, 0.995 * exact) << "layer " << l << " linear " << i << " rank " << rank;
      }
    }
  }
  std::printf("sb-30m: largest relative shortfall of top-r energy: %.3g\n", worst);
}

}  // namespace
}  // namespace subbit::compress
