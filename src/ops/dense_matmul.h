#pragma once
// Dense matrix products with row-major weights W (n_out, n_in), as stored by PyTorch Linear:
//   y (tokens, n_out) = x (tokens, n_in) · Wᵀ
// Weights are F32 or BF16 (decoded on the fly, so BF16 checkpoints run from the memory map at
// half the memory traffic); accumulation is always fp32.
#include <cstdint>

#include "common/dtype.h"

namespace subbit {

struct DenseMatrix {
  DType dtype;
  const void* data;  // (n_out, n_in) row-major
  int64_t n_out;
  int64_t n_in;
};

// SIMD (Highway, dynamic dispatch), multithreaded over output rows.
void dense_matmul(const DenseMatrix& w, const float* x, float* y, int64_t tokens);
// Plain scalar reference the fast path is tested against.
void dense_matmul_reference(const DenseMatrix& w, const float* x, float* y, int64_t tokens);

// Converts one weight row to fp32.
void dense_row_to_f32(const DenseMatrix& w, int64_t row, float* out);

}  // namespace subbit
