#pragma once
// The top singular triples of a matrix without its full SVD: a randomized range finder with
// oversampling and subspace (power) iterations (Halko, Martinsson & Tropp 2011, algorithms 4.4 and
// 5.1), the approach of the LittleBit authors' code. A full SVD of a 4096 x 11008 layer costs
// seconds to minutes; the randomized one costs a few products with the layer.
#include <torch/torch.h>

#include <cstdint>

namespace subbit::compress {

struct TruncatedSvdOptions {
  // Off by default: with these settings sb-30m's layers keep 90-99.9% of the exact top-r energy,
  // short of the 99.5% that would leave compression quality unchanged; 8 iterations reach it on
  // every layer (docs/results.md, "Randomized truncated SVD"), but the post-training perplexity
  // with them is not measured yet.
  bool randomized = false;
  // Extra random directions beyond the rank, and subspace iterations.
  int64_t oversample = 16;
  int power_iterations = 2;
  // Seed of the random test matrix, so that compression is reproducible.
  uint64_t seed = 0x5EEDu;
  // Use the exact SVD when rank + oversample reaches this fraction of min(d_out, d_in): there the
  // randomized method saves little.
  double exact_above = 0.5;
};

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
