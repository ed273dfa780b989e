#include "formats/sketch.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>

#include "common/bit_stream.h"
#include "common/dtype.h"
#include "common/error.h"
#include "formats/tensor_io.h"
#include "ops/parallel.h"

namespace subbit {

namespace {

constexpr int64_t kMaxBuckets = (int64_t{1} << 32) - 1;
constexpr int kHeaderNumbers = 6;  // rule, block, value bits, rows, band rows, hash version

bool fp16_values(int value_bits) { return value_bits == 16; }
int max_code(int value_bits) { return (1 << (value_bits - 1)) - 1; }

void check_layout(int rows, int block, int value_bits) {
  if (rows < 1 || rows > kSketchMaxRows)
    fail("sketch: {} hash rows (supported: 1..{})", rows, kSketchMaxRows);
  if (block < 1 || block > kSketchMaxBlock)
    fail("sketch: block {} (supported: 1..{})", block, kSketchMaxBlock);
  if (!((value_bits >= 2 && value_bits <= 8) || value_bits == 16))
    fail("sketch: {}-bit table values (supported: 2..8, or 16 for fp16)", value_bits);
}

void check_buckets(const std::vector<int64_t>& buckets, int rows, const char* what) {
  if (int64_t(buckets.size()) != rows)
    fail("sketch: {} bucket counts for {} hash rows", what, buckets.size(), rows);
  for (int64_t b : buckets)
    if (b < 1 || b > kMaxBuckets)
      fail("sketch: {} bucket count {} out of range (1..{})", what, b, kMaxBuckets);
}

void check_hash_version(int64_t version) {
  if (version != 1 && version != 2) fail("sketch: hash version {} (supported: 1, 2)", version);
}

// Every band needs a bucket of its own in every table.
void check_bands(int64_t d_out, int64_t band_rows, const std::vector<int64_t>& buckets,
                 const char* what) {
  if (band_rows < 0 || band_rows > d_out)
    fail("sketch: {} rows per band for {} output rows", band_rows, d_out);
  const int64_t bands = sketch_band_count(d_out, band_rows);
  for (int64_t b : buckets)
    if (b < bands) fail("sketch: {} table of {} buckets cannot serve {} row bands", what, b, bands);
}

// n split over `rows` as evenly as possible, the first rows taking the remainder.
std::vector<int64_t> split_even(int64_t n, int rows) {
  std::vector<int64_t> parts(rows, n / rows);
  for (int k = 0; k < n % rows; ++k) ++parts[k];
  return parts;
}

// The seeds of the main rows, then of the salient rows: splitmix64 outputs from `state`.
std::vector<uint64_t> derive_seeds(uint64_t state, int count) {
  std::vector<uint64_t> seeds(count);
  for (uint64_t& s : seeds) s = sketch_mix64(state += kSketchRowMultiplier);
  return seeds;
}

// The step of a symmetric uniform quantizer for one table: the fp16 step (a clipped absmax)
// with the least squared error over the occupied elements. Clipping pays off because the
// insert rules leave few large values.
float choose_scale(const std::vector<float>& values, const std::vector<int32_t>& count,
                   int value_bits) {
  const float q_max = float(max_code(value_bits));
  float abs_max = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (count[i] > 0) abs_max = std::max(abs_max, std::fabs(values[i]));
  if (abs_max == 0) return 1.0f;
  constexpr float kMinNormalF16 = 6.103515625e-05f;
  float best_scale = 0;
  double best_error = INFINITY;
  for (int step = 20; step >= 6; --step) {
    const float scale = round_f16(std::max(abs_max * (float(step) / 20.0f) / q_max, kMinNormalF16));
    double error = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      if (count[i] == 0) continue;
      const double diff =
          double(values[i]) -
          double(sketch_code_value(sketch_code(values[i], value_bits, scale), value_bits, scale));
      error += diff * diff;
    }
    if (error < best_error) best_error = error, best_scale = scale;
  }
  return best_scale;
}

std::vector<uint64_t> pack_codes(const std::vector<uint32_t>& codes, int bits) {
  std::vector<uint64_t> words((int64_t(codes.size()) * bits + 63) / 64, 0);
  for (size_t i = 0; i < codes.size(); ++i) put_bits(words.data(), int64_t(i), bits, codes[i]);
  return words;
}

std::string key(const std::string& prefix, const char* name) {
  return fmt::format("subbit.sketch.{}.{}", prefix, name);
}
std::string table_name(const std::string& prefix, int set, int row) {
  return fmt::format("{}.sketch{}{}", prefix, set == 0 ? "" : "_salient", row);
}

}  // namespace

int16_t sketch_code(float v, int value_bits, float step) {
  if (fp16_values(value_bits)) return int16_t(f32_to_f16(std::clamp(v, -65504.0f, 65504.0f)));
  const float q_max = float(max_code(value_bits));
  return int16_t(std::clamp(std::nearbyint(v / step), -q_max, q_max));
}

float sketch_code_value(int16_t code, int value_bits, float step) {
  return fp16_values(value_bits) ? f16_to_f32(uint16_t(code)) : float(code) * step;
}

std::vector<float> SketchTableSet::values(int k) const {
  std::vector<float> out(codes.at(k).size());
  for (size_t i = 0; i < out.size(); ++i)
    out[i] =
        sketch_code_value(codes[k][i], value_bits, fp16_values(value_bits) ? 0.0f : scales.at(k));
  return out;
}

std::string_view sketch_rule_name(SketchRule rule) {
  switch (rule) {
    case SketchRule::AbsMinMax:
      return "absminmax";
    case SketchRule::AbsMaxMin:
      return "absmaxmin";
    case SketchRule::Mean:
      return "mean";
  }
  return "?";
}

SketchRule parse_sketch_rule(std::string_view name) {
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin, SketchRule::Mean})
    if (name == sketch_rule_name(rule)) return rule;
  fail("unknown sketch rule \"{}\" (absminmax, absmaxmin or mean)", name);
}

int64_t sketch_bits(int64_t d_out, int64_t d_in, int block, int value_bits, int rows,
                    int64_t total_buckets, bool salient) {
  const int64_t hash_rows = rows * (salient ? 2 : 1);
  const int64_t blocks = d_out * ((d_in + block - 1) / block);
  return total_buckets * block * value_bits + 64 * hash_rows +
         (fp16_values(value_bits) ? 0 : 16 * hash_rows) + (salient ? blocks : 0) +
         64 * (kHeaderNumbers + hash_rows);
}

int64_t sketch_storage_bits(int64_t d_out, int64_t d_in, const SketchParams& p) {
  const int64_t total =
      std::accumulate(p.buckets.begin(), p.buckets.end(), int64_t{0}) +
      std::accumulate(p.salient_buckets.begin(), p.salient_buckets.end(), int64_t{0});
  return sketch_bits(d_out, d_in, p.block, p.value_bits, p.rows, total, !p.salient_buckets.empty());
}

double sketch_bpw(int64_t d_out, int64_t d_in, const SketchParams& p) {
  return double(sketch_storage_bits(d_out, d_in, p)) / double(d_out * d_in);
}

SketchParams sketch_params_for_bpw(int64_t d_out, int64_t d_in, double target_bpw, int rows,
                                   int block, int value_bits, double salient_frac,
                                   int64_t band_buckets) {
  check_layout(rows, block, value_bits);
  if (d_out < 1 || d_in < 1) fail("sketch: empty layer ({} x {})", d_out, d_in);
  if (!(target_bpw > 0) || !std::isfinite(target_bpw))
    fail("sketch: target bpw {} must be positive", target_bpw);
  if (!(salient_frac >= 0 && salient_frac < 1))
    fail("sketch: salient fraction {} outside [0, 1)", salient_frac);
  if (band_buckets < 0) fail("sketch: {} buckets per band must not be negative", band_buckets);
  SketchParams p;
  p.rows = rows;
  p.block = block;
  p.value_bits = value_bits;
  const int64_t blocks = d_out * ((d_in + block - 1) / block);
  p.salient_blocks = std::clamp<int64_t>(std::llround(salient_frac * double(blocks)), 0, blocks);
  const bool salient = p.salient_blocks > 0;
  const int64_t sets = salient ? 2 : 1;
  const int64_t budget = int64_t(std::floor(target_bpw * double(d_out) * double(d_in))) -
                         sketch_bits(d_out, d_in, block, value_bits, rows, 0, salient);
  const int64_t total = std::max<int64_t>(budget / (int64_t(value_bits) * block), rows * sets);
  int64_t salient_total = 0;
  if (salient) {
    const double share =
        double(kSketchSalientDensity * p.salient_blocks) /
        double(kSketchSalientDensity * p.salient_blocks + blocks - p.salient_blocks);
    salient_total = std::clamp<int64_t>(std::llround(share * double(total)), rows, total - rows);
    p.salient_buckets = split_even(salient_total, rows);
  }
  p.buckets = split_even(total - salient_total, rows);
  check_buckets(p.buckets, rows, "main");
  if (salient) check_buckets(p.salient_buckets, rows, "salient");
  if (band_buckets > 0) {
    int64_t fewest = *std::min_element(p.buckets.begin(), p.buckets.end());
    if (salient)
      fewest =
          std::min(fewest, *std::min_element(p.salient_buckets.begin(), p.salient_buckets.end()));
    const int64_t bands = std::clamp<int64_t>(fewest / band_buckets, 1, d_out);
    // Rounding the rows per band up can only lower the number of bands.
    p.band_rows = bands > 1 ? (d_out + bands - 1) / bands : 0;
  }
  return p;
}

SketchLinear::SketchLinear(int64_t d_out, int64_t d_in, SketchRule rule, int block,
                           int64_t band_rows, int hash_version,
                           const std::vector<SketchTableSet>& sets,
                           std::vector<uint64_t> salient_mask)
    : salient_mask_(std::move(salient_mask)) {
  if (d_out < 1 || d_in < 1) fail("sketch: empty layer ({} x {})", d_out, d_in);
  if (uint8_t(rule) > uint8_t(SketchRule::Mean)) fail("sketch: unknown rule {}", int(rule));
  check_hash_version(hash_version);
  if (sets.empty() || sets.size() > 2)
    fail("sketch: {} table sets (1 main, optionally 1 salient)", sets.size());
  const int rows = int(sets[0].buckets.size());
  value_bits_ = sets[0].value_bits;
  check_layout(rows, block, value_bits_);
  const int64_t blocks = d_out * ((d_in + block - 1) / block);
  const bool salient = sets.size() == 2;
  const int64_t mask_words = salient ? (blocks + 63) / 64 : 0;
  if (int64_t(salient_mask_.size()) != mask_words)
    fail("sketch: salient mask has {} words, expected {}", salient_mask_.size(), mask_words);
  if (salient && blocks % 64 != 0 && (salient_mask_.back() >> (blocks % 64)) != 0)
    fail("sketch: salient mask has bits set past the last block");

  const bool fp16 = fp16_values(value_bits_);
  for (size_t s = 0; s < sets.size(); ++s) {
    const SketchTableSet& set = sets[s];
    const char* what = s == 0 ? "main" : "salient";
    if (set.value_bits != value_bits_)
      fail("sketch: {} set has {}-bit codes, the main set {}-bit", what, set.value_bits,
           value_bits_);
    check_buckets(set.buckets, rows, what);
    check_bands(d_out, band_rows, set.buckets, what);
    if (int64_t(set.seeds.size()) != rows || int64_t(set.codes.size()) != rows ||
        int64_t(set.scales.size()) != (fp16 ? 0 : rows))
      fail("sketch: {} set needs {} seeds, {} tables and {} scales", what, rows, rows,
           fp16 ? 0 : rows);
    for (int k = 0; k < rows; ++k) {
      if (int64_t(set.codes[k].size()) != set.buckets[k] * block)
        fail("sketch: {} table {} has {} codes, expected {}", what, k, set.codes[k].size(),
             set.buckets[k] * block);
      if (!fp16) {
        const float scale = set.scales[k];
        if (!(scale > 0) || !std::isfinite(scale) || round_f16(scale) != scale)
          fail("sketch: {} table {} has scale {}, not a positive finite fp16 number", what, k,
               scale);
      }
      for (const int16_t code : set.codes[k])
        if (fp16 ? !std::isfinite(f16_to_f32(uint16_t(code)))
                 : std::abs(code) > max_code(value_bits_))
          fail("sketch: {} table {} has {} {}", what, k,
               fp16 ? "the non-finite fp16 value" : "the out-of-range code",
               fp16 ? double(f16_to_f32(uint16_t(code))) : double(code));
    }
    sets_.push_back({set.buckets, set.seeds, set.scales, {}, value_bits_});
  }

  // Runtime tables, one zero-padded bucket per stride, the salient buckets after the main: the
  // codes themselves, a byte per element (4-bit ones packed two per byte, with a negated copy),
  // so 4x smaller than fp32 (q · step is exact in fp32, so the kernels decode the same values),
  // or fp32 for fp16 values.
  const int64_t stride = sketch_bucket_stride(block);
  const SketchTableLayout layout = fp16 ? SketchTableLayout::F32
                                   : value_bits_ <= 4 && stride % 16 == 0
                                       ? SketchTableLayout::Nibble
                                       : SketchTableLayout::Int8;
  matrix_ =
      SketchMatrix{rule, rows, block, {}, nullptr, d_out, d_in, layout, band_rows, hash_version};
  const int64_t bucket_bytes = matrix_.bucket_bytes();
  for (int k = 0; k < rows; ++k) {
    const int64_t main_buckets = sets[0].buckets[k];
    const int64_t total = main_buckets + (salient ? sets[1].buckets[k] : 0);
    // Whole 64-byte lines (the allocation is 64-byte aligned), zero-filled.
    const size_t bytes = size_t((total * bucket_bytes + 63) / 64 * 64);
    hwy::AlignedFreeUniquePtr<uint8_t[]> table = hwy::AllocateAligned<uint8_t>(bytes);
    if (!table) fail("sketch: out of memory for a table of {} buckets", total);
    std::fill_n(table.get(), bytes, uint8_t{0});
    for (size_t s = 0; s < sets.size(); ++s) {
      const std::vector<int16_t>& codes = sets[s].codes[k];
      const uint64_t first = s == 0 ? 0 : uint64_t(main_buckets);
      for (size_t i = 0; i < codes.size(); ++i)
        sketch_put_code(matrix_, table.get(), first + i / block, int64_t(i % block), codes[i]);
    }
    matrix_.hash_rows[k] = SketchHashRow{table.get(),
                                         uint64_t(main_buckets),
                                         sets[0].seeds[k],
                                         salient ? uint64_t(sets[1].buckets[k]) : 0,
                                         salient ? sets[1].seeds[k] : 0,
                                         fp16 ? 0.0f : sets[0].scales[k],
                                         salient && !fp16 ? sets[1].scales[k] : 0.0f};
    tables_.push_back(std::move(table));
  }
  matrix_.salient_mask = salient ? salient_mask_.data() : nullptr;
}

std::unique_ptr<SketchLinear> SketchLinear::encode(const float* w, int64_t d_out, int64_t d_in,
                                                   const SketchParams& p, const float* column_rms) {
  check_layout(p.rows, p.block, p.value_bits);
  check_hash_version(p.hash_version);
  if (d_out < 1 || d_in < 1) fail("sketch: empty layer ({} x {})", d_out, d_in);
  check_buckets(p.buckets, p.rows, "main");
  check_bands(d_out, p.band_rows, p.buckets, "main");
  const int64_t t = p.block;
  const int64_t blocks_per_row = (d_in + t - 1) / t;
  const int64_t blocks = d_out * blocks_per_row;
  const bool salient = !p.salient_buckets.empty();
  if (salient) check_buckets(p.salient_buckets, p.rows, "salient");
  if (salient) check_bands(d_out, p.band_rows, p.salient_buckets, "salient");
  if (salient != (p.salient_blocks > 0) || p.salient_blocks > blocks)
    fail("sketch: {} salient blocks of {} with {} salient table set", p.salient_blocks, blocks,
         salient ? "a" : "no");

  // The salient blocks: largest Σ |w| · rms(x_c) over the block (ties: the earlier block).
  std::vector<uint64_t> mask(salient ? (blocks + 63) / 64 : 0, 0);
  if (salient) {
    std::vector<double> saliency(blocks, 0.0);  // (d_out, blocks_per_row)
    for (int64_t r = 0; r < d_out; ++r)
      for (int64_t c = 0; c < d_in; ++c)
        saliency[r * blocks_per_row + c / t] +=
            std::fabs(double(w[r * d_in + c])) * (column_rms ? column_rms[c] : 1.0);
    std::vector<int64_t> order(blocks);
    std::iota(order.begin(), order.end(), 0);
    std::nth_element(order.begin(), order.begin() + (p.salient_blocks - 1), order.end(),
                     [&](int64_t a, int64_t b) {
                       return saliency[a] != saliency[b] ? saliency[a] > saliency[b] : a < b;
                     });
    for (int64_t i = 0; i < p.salient_blocks; ++i)
      mask[order[i] / 64] |= uint64_t{1} << (order[i] % 64);
  }

  const int sets = salient ? 2 : 1;
  const std::vector<uint64_t> seeds = derive_seeds(p.seed, p.rows * sets);
  // Per set and hash row: the insert rule's running value of each bucket element and how many
  // candidates reached it.
  std::vector<std::vector<float>> value(sets * p.rows);  // [set · rows + k] (buckets, block)
  std::vector<std::vector<double>> sum(sets * p.rows);   // mean rule: exact running sums
  std::vector<std::vector<int32_t>> count(sets * p.rows);
  for (int s = 0; s < sets; ++s)
    for (int k = 0; k < p.rows; ++k) {
      const int64_t n = (s == 0 ? p.buckets[k] : p.salient_buckets[k]) * t;
      value[s * p.rows + k].assign(n, 0.0f);
      count[s * p.rows + k].assign(n, 0);
      if (p.rule == SketchRule::Mean) sum[s * p.rows + k].assign(n, 0.0);
    }

  // Hash rows fill separate tables, so they are inserted in parallel.
  parallel_for(p.rows, 1, [&](int64_t k_begin, int64_t k_end) {
    for (int64_t k = k_begin; k < k_end; ++k)
      for (int64_t r = 0; r < d_out; ++r)
        for (int64_t b = 0; b < blocks_per_row; ++b) {
          const int64_t g = r * blocks_per_row + b;
          const int64_t s = salient && ((mask[g / 64] >> (g % 64)) & 1) ? 1 : 0;
          const int64_t table = s * p.rows + k;
          const uint64_t h = sketch_block_hash(p.hash_version, seeds[table], r, b, blocks_per_row);
          const uint64_t buckets = uint64_t(s == 0 ? p.buckets[k] : p.salient_buckets[k]);
          const int64_t first = int64_t(sketch_row_bucket(h, buckets, d_out, p.band_rows, r)) * t;
          float* v = value[table].data() + first;
          int32_t* n = count[table].data() + first;
          const int64_t width = std::min(t, d_in - b * t);
          for (int64_t j = 0; j < width; ++j) {
            const float w_j = w[r * d_in + b * t + j];
            const float candidate = sketch_negative(h) ? -w_j : w_j;
            switch (p.rule) {
              case SketchRule::AbsMinMax:
                if (n[j] == 0 || std::fabs(candidate) < std::fabs(v[j])) v[j] = candidate;
                break;
              case SketchRule::AbsMaxMin:
                if (n[j] == 0 || std::fabs(candidate) > std::fabs(v[j])) v[j] = candidate;
                break;
              case SketchRule::Mean:
                sum[table][first + j] += candidate;
                break;
            }
            ++n[j];
          }
        }
  });

  std::vector<SketchTableSet> table_sets(sets);
  for (int s = 0; s < sets; ++s) {
    SketchTableSet& set = table_sets[s];
    set.buckets = s == 0 ? p.buckets : p.salient_buckets;
    set.seeds.assign(seeds.begin() + s * p.rows, seeds.begin() + (s + 1) * p.rows);
    set.value_bits = p.value_bits;
    for (int k = 0; k < p.rows; ++k) {
      std::vector<float>& v = value[s * p.rows + k];
      const std::vector<int32_t>& n = count[s * p.rows + k];
      if (p.rule == SketchRule::Mean)
        for (size_t i = 0; i < v.size(); ++i)
          v[i] = n[i] > 0 ? float(sum[s * p.rows + k][i] / n[i]) : 0.0f;
      const float scale = fp16_values(p.value_bits) ? 0.0f : choose_scale(v, n, p.value_bits);
      if (!fp16_values(p.value_bits)) set.scales.push_back(scale);
      std::vector<int16_t> codes(v.size());
      for (size_t i = 0; i < v.size(); ++i) codes[i] = sketch_code(v[i], p.value_bits, scale);
      set.codes.push_back(std::move(codes));
    }
  }
  return std::make_unique<SketchLinear>(d_out, d_in, p.rule, p.block, p.band_rows, p.hash_version,
                                        table_sets, std::move(mask));
}

void SketchLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  sketch_matmul(matrix_, x, y, tokens);
}

void SketchLinear::decode_row(int64_t row, float* out) const {
  sketch_decode_row(matrix_, row, out);
}

void SketchLinear::dequantize(float* w) const {
  const int64_t rows_per_chunk = std::max<int64_t>(64, (int64_t{1} << 18) / matrix_.n_in);
  parallel_for(matrix_.n_out, rows_per_chunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) sketch_decode_row(matrix_, r, w + r * matrix_.n_in);
  });
}

int64_t SketchLinear::storage_bits() const {
  int64_t total = 0;
  for (const SketchTableSet& set : sets_)
    total = std::accumulate(set.buckets.begin(), set.buckets.end(), total);
  return sketch_bits(matrix_.n_out, matrix_.n_in, block(), value_bits_, rows(), total, sets() == 2);
}

std::string SketchLinear::describe() const {
  const int64_t bands = sketch_band_count(n_out(), band_rows());
  std::string text =
      fmt::format("{}, rows {}, block {}, {}, buckets {}, {}", sketch_rule_name(rule()), rows(),
                  block(), fp16_values(value_bits_) ? "fp16" : fmt::format("{}-bit", value_bits_),
                  fmt::join(sets_[0].buckets, "+"),
                  bands == 1 ? std::string("one band") : fmt::format("{} bands", bands));
  if (hash_version() != kSketchHashVersion) text += fmt::format(", hash v{}", hash_version());
  if (sets() == 2) {
    int64_t salient_blocks = 0;
    for (uint64_t word : salient_mask_) salient_blocks += std::popcount(word);
    text += fmt::format(", salient {:.3g}% (buckets {})",
                        100.0 * double(salient_blocks) / double(matrix_.n_out * blocks_per_row()),
                        fmt::join(sets_[1].buckets, "+"));
  }
  return text;
}

SketchTableSet SketchLinear::table_set(int set) const {
  SketchTableSet out = sets_.at(set);
  const int64_t t = block();
  for (int k = 0; k < rows(); ++k) {
    const uint64_t first = set == 0 ? 0 : uint64_t(sets_[0].buckets[k]);
    std::vector<int16_t> codes(out.buckets[k] * t);
    for (int64_t i = 0; i < out.buckets[k]; ++i)
      for (int64_t j = 0; j < t; ++j) codes[i * t + j] = matrix_.code(k, first + uint64_t(i), j);
    out.codes.push_back(std::move(codes));
  }
  return out;
}

int64_t SketchLinear::runtime_bytes() const {
  int64_t bytes = int64_t(salient_mask_.size() * sizeof(uint64_t));
  for (int k = 0; k < rows(); ++k) {
    int64_t buckets = 0;
    for (const SketchTableSet& set : sets_) buckets += set.buckets[k];
    bytes += (buckets * matrix_.bucket_bytes() + 63) / 64 * 64;
  }
  return bytes;
}

// Metadata subbit.sketch.<prefix>.{config = [rule, block, value_bits, rows, band_rows,
// hash_version], buckets, salient_buckets (only with a salient set), seeds (main then salient, as
// int64 bit patterns)};
// tensors <prefix>.sketch<k> and .sketch_salient<k>: table codes, each a little-endian bitstream
// of value_bits-bit codes q + max_code (I8), or fp16 values (F16); .sketch_scales (F16, main
// rows then salient rows; absent for fp16 values); .sketch_mask (I8 words, salient set only).
void SketchLinear::save(GgufWriter& out, const std::string& prefix) const {
  out.set(key(prefix, "config"), std::vector<int64_t>{int64_t(rule()), block(), value_bits_, rows(),
                                                      band_rows(), hash_version()});
  std::vector<int64_t> seeds;
  std::vector<float> scales;
  for (int s = 0; s < sets(); ++s) {
    const SketchTableSet set = table_set(s);
    out.set(key(prefix, s == 0 ? "buckets" : "salient_buckets"), set.buckets);
    for (uint64_t seed : set.seeds) seeds.push_back(std::bit_cast<int64_t>(seed));
    scales.insert(scales.end(), set.scales.begin(), set.scales.end());
    for (int k = 0; k < rows(); ++k) {
      if (fp16_values(value_bits_)) {
        put_f16(out, table_name(prefix, s, k), set.values(k));
        continue;
      }
      const int q_max = max_code(value_bits_);
      std::vector<uint32_t> codes(set.codes[k].size());
      for (size_t i = 0; i < codes.size(); ++i) codes[i] = uint32_t(set.codes[k][i] + q_max);
      put_words(out, table_name(prefix, s, k), pack_codes(codes, value_bits_), 1);
    }
  }
  out.set(key(prefix, "seeds"), seeds);
  if (!fp16_values(value_bits_)) put_f16(out, prefix + ".sketch_scales", scales);
  if (sets() == 2) put_words(out, prefix + ".sketch_mask", salient_mask_, 1);
}

std::unique_ptr<Linear> SketchLinear::load(const GgufFile& file, const std::string& prefix,
                                           int64_t d_out, int64_t d_in) {
  // GgufFile and tensor_io errors name the file themselves; the sketch's own checks get it here.
  const std::string where = fmt::format("{}: {}", file.path().string(), prefix);
  auto in_context = [&](auto&& check) {
    try {
      return check();
    } catch (const Error& e) {
      fail("{}: {}", where, e.what());
    }
  };
  const std::vector<int64_t> config = file.get_int_array(key(prefix, "config"));
  // Files written before row bands have 4 numbers (one band), those written before hash versions
  // 5 (version 1).
  if (config.size() < 4 || config.size() > 6)
    fail("{}: sketch config has {} numbers, expected 6", where, config.size());
  if (config[0] < 0 || config[0] > int64_t(SketchRule::Mean))
    fail("{}: unknown sketch rule {}", where, config[0]);
  for (size_t i = 0; i < 4; ++i)
    if (config[i] < 0 || config[i] > 64)
      fail("{}: sketch config [{}] out of range", where, fmt::join(config, ", "));
  const SketchRule rule = SketchRule(config[0]);
  const int block = int(config[1]), value_bits = int(config[2]), rows = int(config[3]);
  const int64_t band_rows = config.size() >= 5 ? config[4] : 0;
  const int64_t hash_version = config.size() == 6 ? config[5] : 1;
  in_context([&] {
    check_layout(rows, block, value_bits);
    check_hash_version(hash_version);  // before it is narrowed to int below
  });
  if (d_out < 1 || d_in < 1) fail("{}: empty layer ({} x {})", where, d_out, d_in);

  const bool salient = file.has(key(prefix, "salient_buckets"));
  const int sets = salient ? 2 : 1;
  const std::vector<int64_t> seeds = file.get_int_array(key(prefix, "seeds"));
  if (int64_t(seeds.size()) != rows * sets)
    fail("{}: {} seeds, expected {}", where, seeds.size(), rows * sets);
  std::vector<float> scales;
  if (!fp16_values(value_bits)) scales = get_f16(file, prefix + ".sketch_scales", rows * sets);

  std::vector<SketchTableSet> table_sets(sets);
  for (int s = 0; s < sets; ++s) {
    SketchTableSet& set = table_sets[s];
    set.value_bits = value_bits;
    set.buckets = file.get_int_array(key(prefix, s == 0 ? "buckets" : "salient_buckets"));
    in_context([&] { check_buckets(set.buckets, rows, s == 0 ? "main" : "salient"); });
    for (int k = 0; k < rows; ++k)
      set.seeds.push_back(std::bit_cast<uint64_t>(seeds[s * rows + k]));
    if (!fp16_values(value_bits))
      set.scales.assign(scales.begin() + s * rows, scales.begin() + (s + 1) * rows);
    for (int k = 0; k < rows; ++k) {
      const int64_t n = set.buckets[k] * block;
      const std::string name = table_name(prefix, s, k);
      std::vector<int16_t> codes(n);
      if (fp16_values(value_bits)) {
        const std::vector<float> values =
            get_f16(file, name, n);  // the constructor refuses inf and NaN
        for (int64_t i = 0; i < n; ++i)
          codes[i] = int16_t(f32_to_f16(values[i]));  // exact: read from fp16
        set.codes.push_back(std::move(codes));
        continue;
      }
      // The shape is checked before anything of the claimed size is allocated.
      const std::vector<uint64_t> words = get_words(file, name, 1, (n * value_bits + 63) / 64);
      const int q_max = max_code(value_bits);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t code = get_bits(words.data(), i, value_bits);
        if (code > uint32_t(2 * q_max))
          fail("{}: tensor {}: code {} at element {} is out of range (0..{})", where, name, code, i,
               2 * q_max);
        codes[i] = int16_t(int(code) - q_max);
      }
      set.codes.push_back(std::move(codes));
    }
  }
  std::vector<uint64_t> mask;
  if (salient)
    mask = get_words(file, prefix + ".sketch_mask", 1,
                     (d_out * ((d_in + block - 1) / block) + 63) / 64);
  return in_context([&]() -> std::unique_ptr<Linear> {
    return std::make_unique<SketchLinear>(d_out, d_in, rule, block, band_rows, int(hash_version),
                                          table_sets, std::move(mask));
  });
}

}  // namespace subbit
