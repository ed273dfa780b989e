#pragma once
// Group-wise round-to-nearest baseline: each group of 128 consecutive weights of a row gets an
// fp16 scale and fp16 minimum, and every weight a `bits`-bit code q: w ≈ min + q · scale.
//   bits per weight = bits + 32/128 (plus row padding to 64-bit words)
// Codes are a little-endian bitstream per row: code i occupies bits [i·bits, (i+1)·bits).
#include "formats/linear.h"

namespace subbit {

class RtnLinear final : public Linear {
 public:
  static constexpr int64_t kGroup = 128;
  RtnLinear(int64_t d_out, int64_t d_in, int bits, std::vector<uint64_t> codes,
            std::vector<float> scales, std::vector<float> minimums);
  static std::unique_ptr<RtnLinear> encode(const float* w /* (d_out, d_in) */, int64_t d_out,
                                           int64_t d_in, int bits);
  // Codes for w on a given grid (d_out · groups_per_row fp16-representable scales and minimums,
  // row-major), clamped to its levels: what QAT deploys after training on the encoder's grid.
  static std::unique_ptr<RtnLinear> encode_on_grid(const float* w, int64_t d_out, int64_t d_in,
                                                   int bits, std::vector<float> scales,
                                                   std::vector<float> minimums);
  static std::unique_ptr<Linear> load(const GgufFile& file, const std::string& prefix,
                                      int64_t d_out, int64_t d_in);

  int64_t n_in() const override { return d_in_; }
  int64_t n_out() const override { return d_out_; }
  void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const override;
  void decode_row(int64_t row, float* out) const override;
  std::string format_name() const override { return "rtn"; }
  std::string describe() const override;
  int64_t storage_bits() const override;
  void save(GgufWriter& out, const std::string& prefix) const override;
  const std::vector<float>& scales() const { return scales_; }      // (d_out, groups_per_row)
  const std::vector<float>& minimums() const { return minimums_; }  // (d_out, groups_per_row)

 private:
  int64_t groups_per_row() const { return (d_in_ + kGroup - 1) / kGroup; }
  int64_t words_per_row() const { return (d_in_ * bits_ + 63) / 64; }

  int64_t d_out_, d_in_;
  int bits_;
  std::vector<uint64_t> codes_;  // (d_out, words_per_row)
  std::vector<float> scales_;    // (d_out, groups_per_row)
  std::vector<float> minimums_;  // (d_out, groups_per_row)
};

}  // namespace subbit
