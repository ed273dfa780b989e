#pragma once
// Group-wise RTN in the training graph. The encoder's grid (per group of 128 weights of a row: an
// fp16 minimum and scale from the original weights' range) stays fixed; a latent fp32 copy of the
// weights is the parameter, rounded to that grid in the forward pass, with the gradient passed
// straight through the rounding (STE): a latent weight changes its code once it has moved past
// half a level. Deploys as RtnLinear::encode_on_grid of the latent weights, so the file holds
// what forward() used. (Recomputing the grid from the latent weights every step was unstable:
// the weights at a group's extremes move its range, and every code of the group with it. A
// parameter in levels of the grid, (w − minimum) / scale, was measured too: lower KL on the test
// text, higher dev perplexity on both data orders, so not kept; docs/results.md.)
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "compress/torch_llama.h"

namespace subbit::compress {

class RtnTrainable final : public TrainableLinear {
 public:
  RtnTrainable(const torch::Tensor& w /* (n_out, n_in) */, int bits);
  // Each row at its own width (RtnLinear::allocate_row_bits).
  RtnTrainable(const torch::Tensor& w /* (n_out, n_in) */, std::vector<uint8_t> row_bits);
  torch::Tensor forward(const torch::Tensor& x) override;  // (..., n_in) -> (..., n_out)
  torch::Tensor rows(const torch::Tensor& index) override {
    return quantized(latent_.index_select(0, index), minimums_.index_select(0, index),
                     scales_.index_select(0, index), levels_.index_select(0, index));
  }
  std::unique_ptr<Linear> to_runtime() const override;
  // (n_out, n_in): the weights forward() multiplies with.
  torch::Tensor weight() const { return quantized(latent_, minimums_, scales_, levels_); }

 private:
  // Rows of latent weights rounded to their rows of the grid, with a straight-through gradient.
  torch::Tensor quantized(const torch::Tensor& w, const torch::Tensor& minimums,
                          const torch::Tensor& scales, const torch::Tensor& levels) const;

  std::vector<uint8_t> row_bits_;  // (n_out)
  torch::Tensor latent_;    // (n_out, n_in) fp32 parameter
  torch::Tensor minimums_;  // (n_out, groups) fp32, fixed
  torch::Tensor scales_;    // (n_out, groups) fp32, fixed
  torch::Tensor levels_;    // (n_out, 1) fp32: 2^bits − 1 of each row, fixed
};

}  // namespace subbit::compress
