// The randomized truncated SVD against the exact one.
#include <gtest/gtest.h>

#include "compress/littlebit.h"
#include "compress/truncated_svd.h"
#include "common/error.h"

#include <fmt/format.h>

#include <chrono>

#include "formats/littlebit.h"
#include "model/loader.h"
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

const TruncatedSvdOptions kRandomized{.method = SvdMethod::Randomized};

TEST(TruncatedSvd, AutoIsExactOnSmallLayersAndRandomizedOnLargeOnes) {
  torch::manual_seed(3);
  const torch::Tensor small = torch::randn({64, 256});
  EXPECT_TRUE(torch::equal(truncated_svd(small, 8).s, exact_truncated_svd(small, 8).s));
  const torch::Tensor large = torch::randn({1024, 1030});  // both sides >= randomized_from
  // Compared within a tolerance: BLAS's summation order may follow buffer alignment.
  const torch::Tensor automatic = truncated_svd(large, 8).s;
  const double to_randomized = (automatic - truncated_svd(large, 8, kRandomized).s).abs().max().item<double>();
  const double to_exact = (automatic - exact_truncated_svd(large, 8).s).abs().max().item<double>();
  EXPECT_LT(to_randomized, 1e-5 * automatic[0].item<double>());
  EXPECT_GT(to_exact, 1e-3 * automatic[0].item<double>());
}

TEST(TruncatedSvd, MethodNamesRoundTripAndUnknownOnesAreRefused) {
  for (SvdMethod m : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Auto})
    EXPECT_EQ(parse_svd_method(svd_method_name(m), "--svd"), m);
  try {
    parse_svd_method("fast", "--svd");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--svd must be exact, randomized or auto"), std::string::npos) << e.what();
  }
}

// Bounds below hold with room for the defaults (oversample 16, eight subspace iterations).
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

// A measurement, not a check (run with --gtest_also_run_disabled_tests): the share of the exact
// top-r energy that randomized settings keep on every linear layer of sb-30m, at the primary
// path's LittleBit rank for 0.1, 0.55 and 1.0 bpw (docs/results.md, "Randomized truncated SVD").
TEST(TruncatedSvdMeasure, DISABLED_EnergyOnEverySb30mLayer) {
  const auto dir = testing::shared_dir() / "models/sb-30m";
  SKIP_UNLESS_EXISTS(dir);
  ModelBundle bundle = load_hf_model(dir);
  struct Setting {
    int64_t oversample;  // -1: the rank itself
    int iterations;
  };
  const std::vector<Setting> settings = {{16, 2}, {16, 4}, {16, 6}, {16, 8}, {32, 4},
                                         {64, 2}, {64, 4}, {-1, 2}, {-1, 4}};
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  for (double bpw : {0.1, 0.55, 1.0}) {
    std::vector<double> worst(settings.size(), 1.0), sum(settings.size(), 0.0), secs(settings.size(), 0.0);
    double exact_secs = 0;
    int layers = 0;
    for (const LlamaLayer& layer : bundle.model->weights().layers)
      for (const auto& linear : layer.linear) {
        torch::Tensor w = torch::empty({linear->n_out(), linear->n_in()});  // (n_out, n_in)
        linear->dequantize(w.data_ptr<float>());
        const int64_t rank = littlebit_rank_for_bpw(linear->n_in(), linear->n_out(), bpw, 2);
        auto start = Clock::now();
        const double exact = captured_energy(exact_truncated_svd(w, rank), w);
        exact_secs += seconds_since(start);
        for (size_t k = 0; k < settings.size(); ++k) {
          const TruncatedSvdOptions o{.method = SvdMethod::Randomized,
                                      .oversample = settings[k].oversample < 0 ? rank : settings[k].oversample,
                                      .power_iterations = settings[k].iterations,
                                      .exact_above = 2.0};
          start = Clock::now();
          const double kept = captured_energy(truncated_svd(w, rank, o), w) / exact;
          secs[k] += seconds_since(start);
          worst[k] = std::min(worst[k], kept);
          sum[k] += kept;
        }
        ++layers;
      }
    fmt::print("{} bpw: exact SVDs {:.2f} s\n", bpw, exact_secs);
    for (size_t k = 0; k < settings.size(); ++k)
      fmt::print("  oversample {:>4} iterations {}: worst {:.5f} mean {:.5f} {:.2f} s\n",
                 settings[k].oversample < 0 ? "rank" : std::to_string(settings[k].oversample), settings[k].iterations,
                 worst[k], sum[k] / layers, secs[k]);
  }
}

}  // namespace
}  // namespace subbit::compress
