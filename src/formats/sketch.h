#pragma once
// UltraSketch (after UltraSketchLLM, arXiv 2506.17255; our design in docs/ultrasketch.md):
// index-free many-to-one compression. The weights of a layer are hashed, one block of `block`
// consecutive weights of a row at a time, into `rows` small tables of shared value vectors;
// nothing per weight is stored. A weight is read back by combining its hash rows' estimates with
// the layer's rule (ops/sketch_matmul.h). Optionally the most salient blocks go to a second,
// less crowded table set, and a 1-bit-per-block mask says which blocks those are.
//
// Bits per layer (sketch_bits), with S table sets (1, or 2 with a salient set):
//   value_bits · block · Σ buckets      table values (every hash row of every set)
//   + 64 · rows · S                     one seed per hash row
//   + 16 · rows · S                     one fp16 scale per hash row (none for fp16 values)
//   + d_out · ceil(d_in / block)        salient mask (only with a salient set)
//   + 64 · (6 + rows · S)               header: rule, block, value bits, rows, band rows,
//                                       hash version, bucket counts
#include <hwy/aligned_allocator.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/linear.h"
#include "ops/sketch_matmul.h"

namespace subbit {

// Weights per block unless asked otherwise: 32 halves the one-token product's hashing against 16
// and trains as well at 0.5 bpw (docs/ultrasketch.md, "Measurements"; files of any block read
// alike).
inline constexpr int kSketchDefaultBlock = 32;

// What the encoder builds; the bucket counts fix the layer's size (sketch_storage_bits).
struct SketchParams {
  SketchRule rule =
      SketchRule::AbsMaxMin;             // measured best before and after QAT (docs/ultrasketch.md)
  int rows = 2;                          // hash rows, 1 .. kSketchMaxRows
  int block = kSketchDefaultBlock;       // weights per block, 1 .. kSketchMaxBlock
  int value_bits = 4;                    // table value code width: 2 .. 8, or 16 for fp16 values
  std::vector<int64_t> buckets;          // (rows): main table set, each 1 .. 2^32 − 1
  std::vector<int64_t> salient_buckets;  // (rows): salient table set; empty when there is none
  int64_t salient_blocks = 0;            // blocks routed to the salient set (> 0 iff it exists)
  int64_t band_rows = 0;                 // output rows per band, 0: one band (ops/sketch_matmul.h)
  uint64_t seed = 0x5EED;                // hash seeds: the splitmix64 sequence from this state
  int hash_version = kSketchHashVersion;  // 1 or 2 (ops/sketch_matmul.h)
};

// A salient block gets this many times the table space of an ordinary block.
inline constexpr int kSketchSalientDensity = 4;
// Buckets per band and hash row that sketch_params_for_bpw aims at: 256 buckets of 32 4-bit
// codes (with their negated copy) are 8 KiB, so a band's tables of every hash row and set stay
// in L1 while its rows are multiplied. Docs: "Row bands" in docs/ultrasketch.md.
inline constexpr int64_t kSketchBandBuckets = 256;

std::string_view sketch_rule_name(SketchRule rule);   // "absminmax", "absmaxmin", "mean"
SketchRule parse_sketch_rule(std::string_view name);  // throws Error for other names

int64_t sketch_bits(int64_t d_out, int64_t d_in, int block, int value_bits, int rows,
                    int64_t total_buckets, bool salient);
int64_t sketch_storage_bits(int64_t d_out, int64_t d_in, const SketchParams& params);
double sketch_bpw(int64_t d_out, int64_t d_in, const SketchParams& params);

// Bucket counts whose bpw is at most target_bpw and as close to it as one bucket allows
// (value_bits · block bits), split evenly over the hash rows; the salient set, when
// round(salient_frac · blocks) > 0, gets kSketchSalientDensity times the space per block.
// Where the fixed costs alone exceed the target (tiny layers) every row gets one bucket and the
// result overshoots: check sketch_bpw. Rows are banded so that each band has at least
// band_buckets buckets in every table (as many bands as that allows, at most one per row);
// band_buckets = 0 gives one band (plain hashing).
SketchParams sketch_params_for_bpw(int64_t d_out, int64_t d_in, double target_bpw, int rows = 2,
                                   int block = kSketchDefaultBlock, int value_bits = 4,
                                   double salient_frac = 0.0,
                                   int64_t band_buckets = kSketchBandBuckets);

// The one quantizer of table values, used by the encoder, the file, the runtime tables and the
// training graph: for value_bits 2..8 the signed code q = clamp(round_half_even(v / step),
// ±(2^(value_bits-1) - 1)), whose value is q · step (exact in fp32); for 16-bit tables the fp16
// number nearest v (clamped to fp16's finite range) as its bit pattern.
int16_t sketch_code(float v, int value_bits, float step);
float sketch_code_value(int16_t code, int value_bits, float step);

// One table set as the file stores it and the runtime tables are packed from (the packing per
// kernel layout lives in ops/sketch_matmul.h).
struct SketchTableSet {
  std::vector<int64_t> buckets;  // (rows)
  std::vector<uint64_t> seeds;   // (rows)
  std::vector<float> scales;     // (rows): fp16 quantization steps; empty for fp16 values
  std::vector<std::vector<int16_t>> codes;  // (rows) x (buckets[k], block): sketch_code's codes
  int value_bits = 0;
  // Row k's values, sketch_code_value of each code.
  std::vector<float> values(int k) const;
};

class SketchLinear final : public Linear {
 public:
  // `sets` is {main} or {main, salient}, each of `value_bits` codes; `salient_mask`
  // (ceil(d_out · blocks_per_row / 64) words, bit r · blocks_per_row + b) is empty without a
  // salient set. Everything is validated (codes in range, fp16 values finite); violations throw
  // Error. band_rows: output rows per band (0: one band); every table needs at least one bucket
  // per band. hash_version: 1 or 2 (ops/sketch_matmul.h, "Blocks and hashing").
  SketchLinear(int64_t d_out, int64_t d_in, SketchRule rule, int block, int64_t band_rows,
               int hash_version, const std::vector<SketchTableSet>& sets,
               std::vector<uint64_t> salient_mask);

  // column_rms: (d_in) RMS of each input column over calibration tokens, or nullptr; it only
  // ranks blocks by saliency.
  static std::unique_ptr<SketchLinear> encode(const float* w /* (d_out, d_in) */, int64_t d_out,
                                              int64_t d_in, const SketchParams& params,
                                              const float* column_rms);
  static std::unique_ptr<Linear> load(const GgufFile& file, const std::string& prefix,
                                      int64_t d_out, int64_t d_in);

  int64_t n_in() const override { return matrix_.n_in; }
  int64_t n_out() const override { return matrix_.n_out; }
  void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const override;
  void decode_row(int64_t row, float* out) const override;
  void dequantize(float* w) const override;
  std::string format_name() const override { return "sketch"; }
  int64_t storage_bits() const override;
  std::string describe() const override;
  void save(GgufWriter& out, const std::string& prefix) const override;

  SketchRule rule() const { return matrix_.rule; }
  int rows() const { return matrix_.rows; }
  int block() const { return int(matrix_.block); }
  int value_bits() const { return value_bits_; }
  int64_t band_rows() const { return matrix_.band_rows; }
  int hash_version() const { return matrix_.hash_version; }
  int64_t blocks_per_row() const { return matrix_.blocks_per_row(); }
  int sets() const { return int(sets_.size()); }
  // Set 0 is the main set, 1 the salient one; codes are copied out unpadded.
  SketchTableSet table_set(int set) const;
  const std::vector<uint64_t>& salient_mask() const { return salient_mask_; }
  const SketchMatrix& matrix() const { return matrix_; }
  // Bytes the runtime tables and the salient mask occupy in memory: codes take a byte per element
  // (4-bit ones: half a byte, plus a negated copy), fp16 values four (as fp32); buckets are padded
  // to sketch_bucket_stride elements.
  int64_t runtime_bytes() const;

 private:
  int value_bits_;
  std::vector<SketchTableSet> sets_;  // buckets, seeds, scales; the codes live in tables_
  // Per hash row: (main buckets + salient buckets) zero-padded buckets, fp32 values for fp16
  // layers, else the codes (matrix_ says how they are laid out and holds the steps).
  std::vector<hwy::AlignedFreeUniquePtr<uint8_t[]>> tables_;
  std::vector<uint64_t> salient_mask_;
  SketchMatrix matrix_;
};

}  // namespace subbit
