#pragma once
// Products with an UltraSketch layer (docs/ultrasketch.md): W (n_out, n_in) is never stored;
// each weight is read back from small hash tables, so the kernels decode W on the fly:
//   y (tokens, n_out) = x (tokens, n_in) · Wᵀ
//
// Blocks and hashing (also the on-disk meaning of the seeds, do not change it):
//   Row r of W is cut into blocks of `block` consecutive weights; block b holds columns
//   [b·block, b·block + block), the last one zero-padded past n_in. In hash row k the block's
//   bucket and sign come from one hash h of (seed_k, r, b), whose definition the layer's hash
//   version (stored in the file) fixes:
//   version 1 (files written before it had a number), 64 bits:
//     h      = mix64(seed_k ^ (r · 0x9E3779B97F4A7C15) ^ (b · 0xC2B2AE3D27D4EB4F))   (mod 2^64)
//   version 2 (new files), 32 bits, so SIMD hashing takes twice the blocks per vector:
//     h32    = mix32(fold(seed_k) ^ (r · blocks_per_row + b))   (mod 2^32)
//     h      = h32 · 2^32 + (h32 mod 2)   (the same bucket and sign as h32 over 2^32 would give)
//   and for both
//     bucket = floor(h · buckets_k / 2^64)   (buckets_k < 2^32)
//     sign   = −1 if bit 0 of h is set, else +1
//   mix64 is the splitmix64 / murmur3 64-bit finalizer, mix32 murmur3's 32-bit one, fold(s) the
//   xor of the seed's two 32-bit halves. In version 2 a layer's blocks have distinct inputs
//   (r · blocks_per_row + b) while it has fewer than 2^32 blocks, and mix32 is a bijection, so
//   two blocks never share a whole hash (they share a bucket only by chance, as in version 1).
//   The bucket holds `block` values, one per position in the block; the weight at position j
//   reads e_k = sign · table_k[bucket][j]. A block marked salient hashes with that row's salient
//   seed and bucket count instead and reads the salient table, whose buckets follow the main ones.
//
// Row bands (band_rows > 0): output rows are grouped into G = ceil(n_out / band_rows) bands of
// band_rows consecutive rows, and each table of B buckets into G ranges; band g = floor(r /
// band_rows) hashes only into buckets [floor(g·B/G), floor((g+1)·B/G)):
//     bucket = floor(g·B/G) + floor(h · (floor((g+1)·B/G) − floor(g·B/G)) / 2^64)
// Every bucket still takes the same share of blocks, but the buckets one row reads sit in a
// few KiB, so a product streams the tables instead of loading them at random (the loads, not
// the arithmetic, bound the product of large layers). band_rows = 0 is one band: plain hashing.
//
// The read-back rule combines the estimates e_0 .. e_{rows-1} (ties go to the lowest row):
//   AbsMinMax: the e_k of largest magnitude (tables keep the smallest-magnitude candidate),
//   AbsMaxMin: the e_k of smallest magnitude (tables keep the largest-magnitude candidate),
//   Mean:      (e_0 + e_1 + ... + e_{rows-1}) / rows, summed in that order.
// The fast and the reference kernel decode bit-identical weights; they differ only in the
// order of the dot-product accumulation.
#include <cstdint>

#include "common/dtype.h"

namespace subbit {

enum class SketchRule : uint8_t { AbsMinMax = 0, AbsMaxMin = 1, Mean = 2 };

inline constexpr int kSketchMaxRows = 4;
inline constexpr int kSketchMaxBlock = 64;
inline constexpr uint64_t kSketchRowMultiplier = 0x9E3779B97F4A7C15ull;
inline constexpr uint64_t kSketchBlockMultiplier = 0xC2B2AE3D27D4EB4Full;

constexpr uint64_t sketch_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline constexpr int kSketchHashVersion = 2;  // what new files use; 1 and 2 are read

constexpr uint64_t sketch_block_hash_v1(uint64_t seed, int64_t row, int64_t block) {
  return sketch_mix64(seed ^ (uint64_t(row) * kSketchRowMultiplier) ^
                      (uint64_t(block) * kSketchBlockMultiplier));
}

constexpr uint32_t sketch_mix32(uint32_t z) {
  z = (z ^ (z >> 16)) * 0x85EBCA6Bu;
  z = (z ^ (z >> 13)) * 0xC2B2AE35u;
  return z ^ (z >> 16);
}
constexpr uint32_t sketch_fold_seed(uint64_t seed) { return uint32_t(seed ^ (seed >> 32)); }

constexpr uint64_t sketch_block_hash_v2(uint64_t seed, int64_t row, int64_t block,
                                        int64_t blocks_per_row) {
  const uint32_t h =
      sketch_mix32(sketch_fold_seed(seed) ^
                   uint32_t(uint64_t(row) * uint64_t(blocks_per_row) + uint64_t(block)));
  return uint64_t(h) << 32 | (h & 1);
}

constexpr uint64_t sketch_block_hash(int version, uint64_t seed, int64_t row, int64_t block,
                                     int64_t blocks_per_row) {
  return version == 1 ? sketch_block_hash_v1(seed, row, block)
                      : sketch_block_hash_v2(seed, row, block, blocks_per_row);
}

// floor(hash · buckets / 2^64) for buckets < 2^32, from two 32x32-bit products so that every
// platform (and the SIMD kernel) computes it the same way without 128-bit arithmetic.
constexpr uint64_t sketch_bucket(uint64_t hash, uint64_t buckets) {
  return ((hash >> 32) * buckets + (((hash & 0xffffffffull) * buckets) >> 32)) >> 32;
}

constexpr bool sketch_negative(uint64_t hash) { return (hash & 1) != 0; }

// The bucket range of output row `row` in a table of `buckets` buckets (see "Row bands").
struct SketchBand {
  uint64_t first, count;
};
constexpr int64_t sketch_band_count(int64_t n_out, int64_t band_rows) {
  return band_rows <= 0 ? 1 : (n_out + band_rows - 1) / band_rows;
}
constexpr SketchBand sketch_band(uint64_t buckets, int64_t n_out, int64_t band_rows, int64_t row) {
  if (band_rows <= 0) return {0, buckets};
  const uint64_t bands = uint64_t(sketch_band_count(n_out, band_rows)),
                 g = uint64_t(row / band_rows);
  const uint64_t first = buckets * g / bands;  // < 2^64: buckets < 2^32, bands <= n_out < 2^32
  return {first, buckets * (g + 1) / bands - first};
}
// The bucket a block with hash `hash` in output row `row` reads, in a table of `buckets`.
constexpr uint64_t sketch_row_bucket(uint64_t hash, uint64_t buckets, int64_t n_out,
                                     int64_t band_rows, int64_t row) {
  const SketchBand band = sketch_band(buckets, n_out, band_rows, row);
  return band.first + sketch_bucket(hash, band.count);
}

// Elements per bucket in the runtime tables: `block` rounded up so one bucket is whole SIMD
// vectors once widened to fp32 (8 or a multiple of 16 elements); the padding holds zeros.
constexpr int64_t sketch_bucket_stride(int64_t block) {
  return block <= 8 ? 8 : (block + 15) / 16 * 16;
}

// How the runtime tables hold their values. Codes are the signed quantization codes q, whose
// value is q · step (exact in fp32: |q| < 2^7 and the step is an fp16 number).
enum class SketchTableLayout : uint8_t {
  F32,   // fp32 values (layers with fp16 values): `stride` floats per bucket
  Int8,  // one int8 code per element: `stride` bytes per bucket
  // 4-bit two's-complement codes (value_bits <= 4, stride a multiple of 16), `stride` bytes per
  // bucket: the codes of each group of 16 elements in one uint64_t, element j of the group in
  // nibble sketch_nibble(j), for the bucket's stride / 16 groups; then the same words for the
  // negated codes, so a kernel picks the sign by address. sketch_nibble lets a vector of 32-bit
  // lanes holding the word twice per 64 bits get lane j's code with one shift (lane j reads half
  // j % 2 of the word, shifted right by 4 · (j / 2)).
  Nibble,
};

constexpr int sketch_nibble(int64_t j) { return int(8 * (j % 2) + (j % 16) / 2); }

// One hash row's tables: the main buckets, then the salient ones; each bucket is
// sketch_bucket_stride(block) elements, zero past `block`.
struct SketchHashRow {
  const void* table;  // laid out as SketchMatrix::layout says
  uint64_t buckets, seed;
  uint64_t salient_buckets, salient_seed;  // salient_buckets is 0 without a salient set
  float scale = 0, salient_scale = 0;      // code steps of the main and salient buckets
};

struct SketchMatrix {
  SketchRule rule;
  int rows;       // hash rows, 1 .. kSketchMaxRows
  int64_t block;  // weights per block, 1 .. kSketchMaxBlock
  SketchHashRow hash_rows[kSketchMaxRows];
  // Bit (r · blocks_per_row() + b), least-significant first, set when block (r, b) is salient;
  // nullptr when the layer has no salient set.
  const uint64_t* salient_mask;
  int64_t n_out, n_in;
  SketchTableLayout layout = SketchTableLayout::F32;
  int64_t band_rows = 0;                  // rows per band; 0: one band (see "Row bands")
  int hash_version = kSketchHashVersion;  // 1 or 2 (see "Blocks and hashing")

  int64_t blocks_per_row() const { return (n_in + block - 1) / block; }
  // Block b of output row `row` in hash row k: its bucket (main then salient numbering) and
  // whether its values are negated.
  uint64_t bucket_index(int k, int64_t row, int64_t b, bool* negative) const {
    const SketchHashRow& hr = hash_rows[k];
    const bool in_salient = salient(row, b);
    const uint64_t h = sketch_block_hash(hash_version, in_salient ? hr.salient_seed : hr.seed, row,
                                         b, blocks_per_row());
    *negative = sketch_negative(h);
    return (in_salient ? hr.buckets : 0) +
           sketch_row_bucket(h, in_salient ? hr.salient_buckets : hr.buckets, n_out, band_rows,
                             row);
  }
  int64_t stride() const { return sketch_bucket_stride(block); }
  // Bytes per bucket of the tables.
  int64_t bucket_bytes() const {
    return layout == SketchTableLayout::F32 ? stride() * 4 : stride();
  }
  bool salient(int64_t row, int64_t b) const {
    if (salient_mask == nullptr) return false;
    const int64_t bit = row * blocks_per_row() + b;
    return (salient_mask[bit / 64] >> (bit % 64)) & 1;
  }
  // Element j of bucket `index` (main then salient numbering) of hash row k, unsigned.
  float value(int k, uint64_t index, int64_t j) const {
    const SketchHashRow& hr = hash_rows[k];
    if (layout == SketchTableLayout::F32)
      return static_cast<const float*>(hr.table)[index * uint64_t(stride()) + uint64_t(j)];
    return float(code(k, index, j)) * (index < hr.buckets ? hr.scale : hr.salient_scale);
  }
  // The same element's stored code: the signed code q (value q · step), or for the F32 layout
  // the fp16 bit pattern of the value (formats/sketch.h: sketch_code).
  int16_t code(int k, uint64_t index, int64_t j) const {
    const void* table = hash_rows[k].table;
    const uint64_t at = index * uint64_t(stride()) + uint64_t(j);
    switch (layout) {
      case SketchTableLayout::F32:
        return int16_t(f32_to_f16(static_cast<const float*>(table)[at]));
      case SketchTableLayout::Int8:
        return static_cast<const int8_t*>(table)[at];
      case SketchTableLayout::Nibble: {
        const uint64_t word =
            static_cast<const uint64_t*>(table)[index * uint64_t(stride() / 8) + uint64_t(j / 16)];
        const int nibble = int(word >> (4 * sketch_nibble(j))) & 15;
        return int16_t(nibble < 8 ? nibble : nibble - 16);
      }
    }
    return 0;
  }
};

// Writes code() of element j of bucket `index` into a zero-filled table of m's layout: the
// packing the kernels read, kept beside them.
inline void sketch_put_code(const SketchMatrix& m, void* table, uint64_t index, int64_t j,
                            int16_t code) {
  const int64_t stride = m.stride();
  const uint64_t at = index * uint64_t(stride) + uint64_t(j);
  switch (m.layout) {
    case SketchTableLayout::F32:
      static_cast<float*>(table)[at] = f16_to_f32(uint16_t(code));
      return;
    case SketchTableLayout::Int8:
      static_cast<int8_t*>(table)[at] = int8_t(code);
      return;
    case SketchTableLayout::Nibble: {
      // Positive words, then negated ones (stride / 16 each per bucket).
      uint64_t* words =
          static_cast<uint64_t*>(table) + index * uint64_t(stride / 8) + uint64_t(j / 16);
      words[0] |= (uint64_t(code) & 15) << (4 * sketch_nibble(j));
      words[stride / 16] |= (uint64_t(-code) & 15) << (4 * sketch_nibble(j));
      return;
    }
  }
}

// One-token products of the default layers (4-bit codes, two hash rows, the absmaxmin rule,
// blocks of 32) on CPUs with AVX512_BF16 and AVX512_VBMI round the weights and the activations
// to BF16 and accumulate in fp32, about 1.3x faster than exact fp32 (docs/ultrasketch.md, "BF16
// products"). On by default where the CPU has both; off, every product is exact fp32. Returns the
// setting before.
bool set_sketch_bf16_products(bool on);
// Whether such products take the BF16 path now: switched on and the CPU has both.
bool sketch_bf16_products();

// Highway SIMD (dynamic dispatch), multithreaded over output rows; decoding is fused into the
// products (ops/sketch_kernels.h describes the kernels and where each part lives).
void sketch_matmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
// Plain scalar reference: decodes each row, double accumulation rounded to fp32.
void sketch_matmul_reference(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
// Row `row` of W (n_in floats), scalar.
void sketch_decode_row(const SketchMatrix& m, int64_t row, float* out);

}  // namespace subbit
