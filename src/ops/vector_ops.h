#pragma once
// Element-wise and reduction kernels of the transformer block. They know nothing about models.
#include <cstdint>
#include <vector>

namespace subbit {

float dot(const float* a, const float* b, int64_t n);
// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);

// out (tokens, dim) = x / rms(x) * weight, per row.
void rms_norm(const float* x, const float* weight, float* out, int64_t tokens, int64_t dim, float eps);

// gate (tokens, dim) <- silu(gate) * up
void silu_mul(float* gate, const float* up, int64_t count);

// In-place softmax of n values.
void softmax(float* x, int64_t n);

// Rotary position embedding in the Hugging Face "rotate_half" layout: element i pairs with
// i + head_dim/2. x is (heads, head_dim) for one token at `position`.
struct RopeTable {
  RopeTable(int64_t head_dim, double theta, int64_t max_positions);
  void apply(float* x, int64_t heads, int64_t position) const;
  int64_t head_dim;
  int64_t max_positions;
  std::vector<float> cos_sin;  // (max_positions, head_dim/2, 2)
};

}  // namespace subbit
