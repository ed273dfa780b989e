#include "formats/sign.h"

#include <cmath>

#include "common/dtype.h"
#include "common/error.h"
#include "formats/tensor_io.h"
#include "ops/sign_matmul.h"

namespace subbit {

void rank1_nonnegative(const float* m, int64_t rows, int64_t cols, std::vector<float>& a,
                       std::vector<float>& b) {
  std::vector<double> u(rows, 1.0), v(cols, 0.0);
  double sigma = 0;
  for (int iteration = 0; iteration < 30; ++iteration) {
    std::fill(v.begin(), v.end(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[c] += m[r * cols + c] * u[r];
    double norm_v = 0;
    for (double x : v) norm_v += x * x;
    norm_v = std::sqrt(norm_v);
    if (norm_v == 0) break;
    for (double& x : v) x /= norm_v;
    double norm_u = 0;
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += m[r * cols + c] * v[c];
      u[r] = s;
      norm_u += s * s;
    }
    sigma = std::sqrt(norm_u);
    if (sigma == 0) break;
    for (double& x : u) x /= sigma;
  }
  // Split σ evenly so neither scale vector is tiny in fp16.
  const double root = std::sqrt(sigma);
  a.resize(rows);
  b.resize(cols);
  for (int64_t r = 0; r < rows; ++r) a[r] = float(u[r] * root);
  for (int64_t c = 0; c < cols; ++c) b[c] = float(v[c] * root);
}

SignLinear::SignLinear(int64_t d_out, int64_t d_in, std::vector<uint64_t> signs,
                       std::vector<float> row_scale, std::vector<float> col_scale)
    : d_out_(d_out),
      d_in_(d_in),
      signs_(std::move(signs)),
      row_scale_(std::move(row_scale)),
      col_scale_(std::move(col_scale)) {
  if (int64_t(signs_.size()) != d_out * sign_words_per_row(d_in) ||
      int64_t(row_scale_.size()) != d_out || int64_t(col_scale_.size()) != d_in)
    fail("sign layer ({} x {}): inconsistent signs or scales", d_out, d_in);
  blocks_ = sign_blocks({signs_.data(), d_out, d_in});
}

std::unique_ptr<SignLinear> SignLinear::encode(const float* w, int64_t d_out, int64_t d_in) {
  std::vector<float> magnitude(d_out * d_in);
  for (int64_t i = 0; i < d_out * d_in; ++i) magnitude[i] = std::fabs(w[i]);
  std::vector<float> a, b;
  rank1_nonnegative(magnitude.data(), d_out, d_in, a, b);
  for (float& x : a) x = round_f16(x);
  for (float& x : b) x = round_f16(x);
  std::vector<uint64_t> signs(d_out * sign_words_per_row(d_in));
  pack_signs(w, d_out, d_in, signs.data());
  return std::make_unique<SignLinear>(d_out, d_in, std::move(signs), std::move(a), std::move(b));
}

void SignLinear::forward(const float* x, float* y, int64_t tokens, Scratch&) const {
  sign_matmul({signs_.data(), d_out_, d_in_, blocks_.data()}, x, y, tokens,
              SignScales{col_scale_.data(), row_scale_.data(), false});
}

void SignLinear::decode_row(int64_t o, float* out) const {
  const uint64_t* row = signs_.data() + o * sign_words_per_row(d_in_);
  for (int64_t i = 0; i < d_in_; ++i)
    out[i] = ((row[i / 64] >> (i % 64)) & 1 ? row_scale_[o] : -row_scale_[o]) * col_scale_[i];
}

void SignLinear::save(GgufWriter& out, const std::string& prefix) const {
  put_words(out, prefix + ".signs", signs_, d_out_);
  put_f16(out, prefix + ".row_scale", row_scale_);
  put_f16(out, prefix + ".col_scale", col_scale_);
}

std::unique_ptr<Linear> SignLinear::load(const GgufFile& file, const std::string& prefix,
                                         int64_t d_out, int64_t d_in) {
  return std::make_unique<SignLinear>(
      d_out, d_in, get_words(file, prefix + ".signs", d_out, sign_words_per_row(d_in)),
      get_f16(file, prefix + ".row_scale", d_out), get_f16(file, prefix + ".col_scale", d_in));
}

}  // namespace subbit
