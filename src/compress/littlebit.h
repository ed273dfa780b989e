#pragma once
// LittleBit in the training graph: Dual-SVID initialisation and the trainable factorisation
// whose sign() uses a smooth surrogate gradient.
#include <torch/torch.h>

#include "compress/torch_llama.h"
#include "compress/truncated_svd.h"

namespace subbit::compress {

// One path's latent (real-valued) factors: W ≈ diag(h) sign(u) diag(l) sign(v)ᵀ diag(g).
struct LatentFactors {
  torch::Tensor u;  // (d_out, r) = U_r √Σ
  torch::Tensor v;  // (d_in, r)  = V_r √Σ
  torch::Tensor h;  // (d_out)
  torch::Tensor g;  // (d_in)
  torch::Tensor l;  // (r) = l_u ⊙ l_v
};

// Truncated SVD W ≈ U_r Σ V_rᵀ with √Σ on each side, then rank-1 SVDs of |U| and |V| for the
// scale vectors (each splitting √σ₁).
LatentFactors dual_svid(const torch::Tensor& w, int64_t rank,
                        const TruncatedSvdOptions& svd_options = {});

// binarize=true: diag(h) sign(u) diag(l) sign(v)ᵀ diag(g) (what the layer computes);
// false: u vᵀ (the real-valued latent product, exact at full rank).
torch::Tensor reconstruct(const LatentFactors& f, bool binarize);

// sign(x) with sign(0) = +1 whose gradient is a surrogate: α(1 − tanh²(αx)), or the
// straight-through estimator clipped to |x| < 1; Frozen: no gradient, the signs keep their
// Dual-SVID values and only the scales (and norms) train, the ablation baseline for sign learning.
enum class SignSurrogate { Tanh, ClippedSte, Frozen };
torch::Tensor surrogate_sign(const torch::Tensor& x, SignSurrogate surrogate, double alpha);

class LittleBitTrainable final : public TrainableLinear {
 public:
  // Dual-SVID of w for the primary path, and of the primary's residual for the second path.
  LittleBitTrainable(const torch::Tensor& w, int64_t rank, bool residual, SignSurrogate surrogate,
                     double alpha, const TruncatedSvdOptions& svd_options = {});
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor rows(const torch::Tensor& index) override;
  std::unique_ptr<Linear> to_runtime() const override;

 private:
  std::vector<LatentFactors> paths_;
  SignSurrogate surrogate_;
  double alpha_;
  int64_t d_out_, d_in_;
};

}  // namespace subbit::compress
