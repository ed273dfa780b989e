#include "compress/truncated_svd.h"

#include <algorithm>
#include <random>

#include "common/error.h"

namespace subbit::compress {

namespace {

// An orthonormal basis of y's columns.
torch::Tensor orthonormal(const torch::Tensor& y) {
  return std::get<0>(at::linalg_qr(y, "reduced"));
}

// (rows, cols) standard normal from a seeded std::mt19937_64, identical on every libtorch version
// and device.
torch::Tensor gaussian(int64_t rows, int64_t cols, uint64_t seed,
                       const torch::TensorOptions& options) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  torch::Tensor t = torch::empty({rows, cols}, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < rows * cols; ++i) p[i] = normal(rng);
  return t.to(options);
}

}  // namespace

SvdMethod parse_svd_method(const std::string& name, const std::string& option) {
  if (name == "exact") return SvdMethod::Exact;
  if (name == "gram") return SvdMethod::Gram;
  if (name == "randomized") return SvdMethod::Randomized;
  if (name == "auto") return SvdMethod::Auto;
  fail("{} must be exact, gram, randomized or auto, got \"{}\"", option, name);
}

const char* svd_method_name(SvdMethod method) {
  switch (method) {
    case SvdMethod::Exact:
      return "exact";
    case SvdMethod::Gram:
      return "gram";
    case SvdMethod::Randomized:
      return "randomized";
    case SvdMethod::Auto:
      return "auto";
  }
  return "?";
}

TruncatedSvd exact_truncated_svd(const torch::Tensor& w, int64_t rank) {
  auto [u, s, vh] = torch::linalg::svd(w, false, c10::nullopt);
  return {u.slice(1, 0, rank), s.slice(0, 0, rank), vh.slice(0, 0, rank)};
}

TruncatedSvd gram_truncated_svd(const torch::Tensor& w, int64_t rank) {
  torch::NoGradGuard no_grad;
  // Decompose on the smaller side: w = U Σ Vᵀ gives wᵀw = V Σ² Vᵀ and wwᵀ = U Σ² Uᵀ.
  const bool tall = w.size(0) >= w.size(1);
  const torch::Tensor gram = tall ? torch::matmul(w.t(), w) : torch::matmul(w, w.t());
  // libtorch 1.13's float eigensolver asks LAPACK for its workspace size and receives it as a
  // float: above 2^24 (a side of ~2900) the odd size 1 + 6n + 2n² rounds down and ssyevd refuses
  // it ("Argument 8 has illegal value"). Larger Gram matrices are decomposed in double.
  const int64_t side_n = gram.size(0);
  const bool float_workspace_exact = 1 + 6 * side_n + 2 * side_n * side_n <= (int64_t(1) << 24);
  auto [eigenvalues, eigenvectors] = torch::linalg::eigh(
      float_workspace_exact ? gram : gram.to(torch::kFloat64), "L");  // ascending
  eigenvalues = eigenvalues.to(w.scalar_type());
  eigenvectors = eigenvectors.to(w.scalar_type());
  const int64_t n = eigenvalues.size(0);
  const torch::Tensor s = eigenvalues.slice(0, n - rank).flip(0).clamp_min(0).sqrt();
  const torch::Tensor side =
      eigenvectors.slice(1, n - rank).flip(1).contiguous();  // (smaller side, rank)
  // The other factor; a zero singular value leaves its column zero instead of dividing by zero.
  const torch::Tensor inverse = torch::where(s > 0, 1.0 / s, torch::zeros_like(s));
  if (tall) return {torch::matmul(w, side) * inverse, s, side.t().contiguous()};
  return {side, s, (torch::matmul(side.t(), w) * inverse.unsqueeze(1)).contiguous()};
}

SvdMethod chosen_svd_method(int64_t d_out, int64_t d_in, int64_t rank,
                            const TruncatedSvdOptions& o) {
  const int64_t smaller = std::min(d_out, d_in);
  const bool randomized_saves_little =
      double(rank + o.oversample) >= o.exact_above * double(smaller);
  switch (o.method) {
    case SvdMethod::Auto:
      if (smaller < o.large_from) return SvdMethod::Exact;
      return smaller < o.randomized_from || randomized_saves_little ? SvdMethod::Gram
                                                                    : SvdMethod::Randomized;
    case SvdMethod::Randomized:
      return randomized_saves_little ? SvdMethod::Exact : SvdMethod::Randomized;
    default:
      return o.method;
  }
}

TruncatedSvd truncated_svd(const torch::Tensor& w, int64_t rank, const TruncatedSvdOptions& o) {
  torch::NoGradGuard no_grad;
  const int64_t d_out = w.size(0), d_in = w.size(1);
  switch (chosen_svd_method(d_out, d_in, rank, o)) {
    case SvdMethod::Gram:
      return gram_truncated_svd(w, rank);
    case SvdMethod::Randomized:
      break;
    default:
      return exact_truncated_svd(w, rank);
  }
  const int64_t k = std::min(rank + o.oversample, std::min(d_out, d_in));
  // Range of w: Q spans w·Ω, sharpened by subspace iterations (re-orthonormalised each half step,
  // since the powers of w's spectrum would otherwise drown the smaller directions in rounding).
  torch::Tensor q =
      orthonormal(torch::matmul(w, gaussian(d_in, k, o.seed, w.options())));  // (d_out, k)
  for (int i = 0; i < o.power_iterations; ++i) {
    const torch::Tensor z = orthonormal(torch::matmul(w.t(), q));  // (d_in, k)
    q = orthonormal(torch::matmul(w, z));
  }
  const torch::Tensor b = torch::matmul(q.t(), w);  // (k, d_in): w ≈ q b
  auto [ub, s, vh] = torch::linalg::svd(b, false, c10::nullopt);
  return {torch::matmul(q, ub.slice(1, 0, rank)), s.slice(0, 0, rank), vh.slice(0, 0, rank)};
}

}  // namespace subbit::compress
