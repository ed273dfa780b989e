#pragma once
// Group-wise round-to-nearest: each group of 128 consecutive weights of a row gets an fp16 scale
// and fp16 minimum, and every weight a b-bit code q: w ≈ min + q · scale. Every row has its own
// b (1..8): one width for all rows (`rtn:N`), or widths allocated by row importance (the
// embedding/head's rows by token frequency, `rtn:2.5`; allocate_row_bits, 2..8 bits).
//   bits per weight = mean b + 32/128 (plus row padding to 64-bit words, plus 8 bits per row
//   for the widths when they differ)
// Codes are a little-endian bitstream per row, each row padded to whole 64-bit words: code i of
// row r occupies bits [i·b_r, (i+1)·b_r) of the row's words.
#include <cstdint>
#include <span>

#include "formats/linear.h"

namespace subbit {

class RtnLinear final : public Linear {
 public:
  static constexpr int64_t kGroup = 128;
  static constexpr int kMaxBits = 8;
  // The narrowest width allocate_row_bits gives: a 1-bit row on the min/max grid puts every
  // weight at its group's extremes, and a tied head with a few such rows (the rarest tokens)
  // gives them large logits everywhere: sb-30m's dev perplexity went from 84.9 (every row 2
  // bits) to 1037 with 2% of the rows at 1 bit and the rest at 2 (docs/results.md).
  static constexpr int kMinAllocatedBits = 2;
  // row_bits: (d_out) widths; a single entry gives every row that width.
  RtnLinear(int64_t d_out, int64_t d_in, std::vector<uint8_t> row_bits, std::vector<uint64_t> codes,
            std::vector<float> scales, std::vector<float> minimums);
  static std::unique_ptr<RtnLinear> encode(const float* w /* (d_out, d_in) */, int64_t d_out,
                                           int64_t d_in, int bits);
  static std::unique_ptr<RtnLinear> encode(const float* w /* (d_out, d_in) */, int64_t d_out,
                                           int64_t d_in, std::vector<uint8_t> row_bits);
  // The encoder's grid for w: per group of a row, the fp16 minimum and the fp16 step that spans
  // the group's range in 2^b − 1 levels. (d_out, groups_per_row) each, row-major.
  static void encoder_grid(const float* w, int64_t d_out, int64_t d_in,
                           std::span<const uint8_t> row_bits, std::vector<float>& scales,
                           std::vector<float>& minimums);
  // Codes for w on a given grid (d_out · groups_per_row fp16-representable scales and minimums,
  // row-major), clamped to its levels: what QAT deploys after training on the encoder's grid.
  static std::unique_ptr<RtnLinear> encode_on_grid(const float* w, int64_t d_out, int64_t d_in,
                                                   std::vector<uint8_t> row_bits,
                                                   std::vector<float> scales,
                                                   std::vector<float> minimums);
  // Widths 2..8 per row with mean_bits · d_out in all (mean_bits in [2, 8]) that minimise the
  // importance-weighted squared rounding error Σ_r importance_r · Σ_groups n_g (range_g /
  // (2^b_r − 1))², greedily: each extra bit goes to the row it helps most (the error falls
  // convexly in b, so greedy is optimal). importance: (d_out), non-negative.
  static std::vector<uint8_t> allocate_row_bits(const float* w, int64_t d_out, int64_t d_in,
                                                std::span<const double> importance,
                                                double mean_bits);
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
  int row_bits(int64_t row) const { return row_bits_[row]; }
  bool uniform() const;  // every row has the same width

 private:
  static int64_t groups_for(int64_t d_in) { return (d_in + kGroup - 1) / kGroup; }
  int64_t groups_per_row() const { return groups_for(d_in_); }
  // Word offsets of the rows' codes from row_bits_: (d_out + 1).
  void lay_out_rows();

  int64_t d_out_, d_in_;
  std::vector<uint8_t> row_bits_;      // (d_out)
  std::vector<int64_t> row_offsets_;  // (d_out + 1) into codes_, in words
  std::vector<uint64_t> codes_;       // rows' padded bitstreams, concatenated, + 1 spare word
  std::vector<float> scales_;         // (d_out, groups_per_row)
  std::vector<float> minimums_;       // (d_out, groups_per_row)
};

}  // namespace subbit
