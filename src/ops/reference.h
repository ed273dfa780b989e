#pragma once
// The plain scalar reference product shared by formats that can decode W one row at a time:
//   y (tokens, n_out) = x (tokens, n_in) · Wᵀ
// decode_row(o, row) writes row o of W (n_in floats); every dot product accumulates in double in
// column order and is rounded to fp32 once, so the result does not depend on the fast kernels.
#include <cstdint>
#include <vector>

namespace subbit {

template <class DecodeRow>
void matmul_reference_by_rows(int64_t n_out, int64_t n_in, const DecodeRow& decode_row,
                              const float* x, float* y, int64_t tokens) {
  std::vector<float> row(n_in);
  for (int64_t o = 0; o < n_out; ++o) {
    decode_row(o, row.data());
    for (int64_t t = 0; t < tokens; ++t) {
      double sum = 0;
      for (int64_t i = 0; i < n_in; ++i) sum += double(row[i]) * x[t * n_in + i];
      y[t * n_out + o] = float(sum);
    }
  }
}

}  // namespace subbit
