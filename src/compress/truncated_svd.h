#pragma once
// The top singular triples of a layer for Dual-SVID, three ways: LAPACK's full SVD, the Gram
// matrix's eigendecomposition, and a randomized range finder with oversampling and subspace
// (power) iterations (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1; the approach of the
// LittleBit authors' code). Measured against each other in docs/results.md ("Truncated SVD for
// Dual-SVID").
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace subbit::compress {

enum class SvdMethod {
  // LAPACK's full SVD (gesdd), truncated: cubic in the smaller side with a large constant.
  Exact,
  // Eigendecomposition of the Gram matrix on the smaller side (WᵀW or WWᵀ), then the other
  // factor as W·V/σ: the exact top-r triples up to rounding (squaring W costs precision only for
  // σ_i below ~3e-4·σ_1, far under any rank Dual-SVID keeps), at 2-3x less time than gesdd on
  // 2048-wide layers.
  Gram,
  // Randomized range finder with oversampling and subspace iterations.
  Randomized,
  // By the smaller side: the exact SVD below `large_from` (milliseconds), Gram up to
  // `randomized_from` (there gesdd costs seconds per layer), randomized from it (on the
  // Llama-2-7B shape, 4096 wide, a block took 72 s against Gram's 103 s, whose eigensolver must
  // run in double there: see gram_truncated_svd).
  Auto,
};

struct TruncatedSvdOptions {
  SvdMethod method = SvdMethod::Auto;
  int64_t large_from = 1024;
  int64_t randomized_from = 3072;
  // Randomized: extra random directions beyond the rank, and subspace iterations. 16 and 8 keep
  // >= 99.6% of the exact top-r energy on every sb-30m layer; 2 iterations kept as little as 90%.
  int64_t oversample = 16;
  int power_iterations = 8;
  // Seed of the random test matrix, so that compression is reproducible.
  uint64_t seed = 0x5EEDu;
  // Randomized: use the exact SVD when rank + oversample reaches this fraction of
  // min(d_out, d_in), where the randomized method saves little.
  double exact_above = 0.5;
};

// "exact" | "gram" | "randomized" | "auto"; throws Error naming `option` otherwise.
SvdMethod parse_svd_method(const std::string& name, const std::string& option);
const char* svd_method_name(SvdMethod method);

struct TruncatedSvd {
  torch::Tensor u;   // (d_out, rank)
  torch::Tensor s;   // (rank)
  torch::Tensor vh;  // (rank, d_in)
};

// The method truncated_svd uses for a (d_out, d_in) layer at `rank`: never Auto.
SvdMethod chosen_svd_method(int64_t d_out, int64_t d_in, int64_t rank,
                            const TruncatedSvdOptions& options);
// w: (d_out, d_in) fp32.
TruncatedSvd truncated_svd(const torch::Tensor& w, int64_t rank,
                           const TruncatedSvdOptions& options = {});
// The exact SVD, truncated: the reference the others are measured against.
TruncatedSvd exact_truncated_svd(const torch::Tensor& w, int64_t rank);
TruncatedSvd gram_truncated_svd(const torch::Tensor& w, int64_t rank);

}  // namespace subbit::compress
