#pragma once
// The 1-bit baseline: W ≈ diag(a) · sign(W) · diag(b), with a bᵀ the rank-1 approximation of
// |W| (OneBit's SVID initialisation). 1 bit per weight plus fp16 row and column scales:
//   bits = d_out·d_in + 16·(d_out + d_in)
#include "formats/linear.h"

namespace subbit {

class SignLinear final : public Linear {
 public:
  SignLinear(int64_t d_out, int64_t d_in, std::vector<uint64_t> signs, std::vector<float> row_scale,
             std::vector<float> col_scale);
  static std::unique_ptr<SignLinear> encode(const float* w /* (d_out, d_in) */, int64_t d_out,
                                            int64_t d_in);
  static std::unique_ptr<Linear> load(const GgufFile& file, const std::string& prefix,
                                      int64_t d_out, int64_t d_in);

  int64_t n_in() const override { return d_in_; }
  int64_t n_out() const override { return d_out_; }
  void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const override;
  void decode_row(int64_t row, float* out) const override;
  std::string format_name() const override { return "sign"; }
  int64_t storage_bits() const override { return d_out_ * d_in_ + 16 * (d_out_ + d_in_); }
  void save(GgufWriter& out, const std::string& prefix) const override;

 private:
  int64_t d_out_, d_in_;
  std::vector<uint64_t> signs_;  // sign matrix (d_out, d_in)
  // The same signs in the product kernel's block layout (sign_blocks), as LittleBit keeps them:
  // twice the signs' memory, about half the product's time.
  std::vector<uint32_t> blocks_;
  std::vector<float> row_scale_, col_scale_;
};

// Rank-1 approximation m ≈ a bᵀ of a non-negative (rows, cols) matrix by power iteration.
void rank1_nonnegative(const float* m, int64_t rows, int64_t cols, std::vector<float>& a,
                       std::vector<float>& b);

}  // namespace subbit
