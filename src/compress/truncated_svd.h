#pragma once
// The top singular triples of a matrix without its full SVD: a randomized range finder with
// oversampling and subspace (power) iterations (Halko, Martinsson & Tropp 2011, algorithms 4.4 and
// 5.1), the approach of the LittleBit authors' code. A full SVD of a 4096 x 11008 layer costs
// seconds to minutes; the randomized one costs a few products with the layer.
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace subbit::compress {

enum class SvdMethod {
  Exact,
  Randomized,
  // Randomized where the layer's smaller side is at least `randomized_from` (there the exact SVD
  // costs seconds to minutes per layer), exact below it (where it costs milliseconds).
  Auto,
};

struct TruncatedSvdOptions {
  SvdMethod method = SvdMethod::Auto;
  int64_t randomized_from = 1024;
  // Extra random directions beyond the rank, and subspace iterations: 16 and 8 keep >= 99.6% of
  // the exact top-r energy on every sb-30m layer and the post-training perplexity within 0.5%
  // (docs/results.md, "Randomized truncated SVD"); 2 iterations kept as little as 90%.
  int64_t oversample = 16;
  int power_iterations = 8;
  // Seed of the random test matrix, so that compression is reproducible.
  uint64_t seed = 0x5EEDu;
  // Use the exact SVD when rank + oversample reaches this fraction of min(d_out, d_in): there the
  // randomized method saves little.
  double exact_above = 0.5;
};

// "exact" | "randomized" | "auto"; throws Error naming `option` otherwise.
SvdMethod parse_svd_method(const std::string& name, const std::string& option);
const char* svd_method_name(SvdMethod method);

struct TruncatedSvd {
  torch::Tensor u;   // (d_out, rank)
  torch::Tensor s;   // (rank)
  torch::Tensor vh;  // (rank, d_in)
};

// w: (d_out, d_in) fp32.
TruncatedSvd truncated_svd(const torch::Tensor& w, int64_t rank, const TruncatedSvdOptions& options = {});
// The exact SVD, truncated: the reference the randomized one is measured against.
TruncatedSvd exact_truncated_svd(const torch::Tensor& w, int64_t rank);

}  // namespace subbit::compress
