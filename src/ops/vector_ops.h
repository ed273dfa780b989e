#pragma once
// Element-wise and reduction kernels of the transformer block. They know nothing about models.
#include <cstdint>
#include <vector>

namespace subbit {

float dot(const float* a, const float* b, int64_t n);
// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);

// out (tokens, dim) = x / rms(x) * weight, per row.
void rms_norm(const float* x, const float* weight, float* out, int64_t tokens, int64_t dim,
              float eps);

// gate (tokens, dim) <- silu(gate) * up
void silu_mul(float* gate, const float* up, int64_t count);

// In-place softmax of n values.
void softmax(float* x, int64_t n);

// Rotary position embedding in the Hugging Face "rotate_half" layout: element i pairs with
// i + head_dim/2. x is (heads, head_dim) for one token at `position`.
// Rotary position embedding (rotate-half layout) from precomputed inverse frequencies. The angles
// are computed per call, in fp32 as transformers does, so long contexts cost no table memory.
class Rope {
 public:
  explicit Rope(std::vector<float> inverse_frequencies);  // (head_dim / 2)
  // x: (heads, head_dim), rotated in place for `position`.
  void apply(float* x, int64_t heads, int64_t position) const;

 private:
  std::vector<float> inv_freq_;
};

}  // namespace subbit
