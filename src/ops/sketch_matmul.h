#pragma once
// Products with an UltraSketch layer (docs/ultrasketch.md): W (n_out, n_in) is never stored;
// each weight is read back from small hash tables, so the kernels decode W on the fly:
//   y (tokens, n_out) = x (tokens, n_in) · Wᵀ
//
// Blocks and hashing (also the on-disk meaning of the seeds, do not change it):
//   Row r of W is cut into blocks of `block` consecutive weights; block b holds columns
//   [b·block, b·block + block), the last one zero-padded past n_in. In hash row k the block's
//   bucket and sign come from one 64-bit hash of (seed_k, r, b):
//     h      = mix64(seed_k ^ (r · 0x9E3779B97F4A7C15) ^ (b · 0xC2B2AE3D27D4EB4F))   (mod 2^64)
//     bucket = floor(h · buckets_k / 2^64)   (buckets_k < 2^32)
//     sign   = −1 if bit 0 of h is set, else +1
//   mix64 is the splitmix64 / murmur3 finalizer. The bucket holds `block` values, one per
//   position in the block; the weight at position j reads e_k = sign · table_k[bucket][j].
//   A block marked salient hashes with that row's salient seed and bucket count instead and
//   reads the salient table, whose buckets follow the main ones.
//
// The read-back rule combines the estimates e_0 .. e_{rows-1} (ties go to the lowest row):
//   AbsMinMax: the e_k of largest magnitude (tables keep the smallest-magnitude candidate),
//   AbsMaxMin: the e_k of smallest magnitude (tables keep the largest-magnitude candidate),
//   Mean:      (e_0 + e_1 + ... + e_{rows-1}) / rows, summed in that order.
// The fast and the reference kernel decode bit-identical weights; they differ only in the
// order of the dot-product accumulation.
#include <cstdint>

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

constexpr uint64_t sketch_block_hash(uint64_t seed, int64_t row, int64_t block) {
  return sketch_mix64(seed ^ (uint64_t(row) * kSketchRowMultiplier) ^
                      (uint64_t(block) * kSketchBlockMultiplier));
}

// floor(hash · buckets / 2^64) for buckets < 2^32, from two 32x32-bit products so that every
// platform (and the SIMD kernel) computes it the same way without 128-bit arithmetic.
constexpr uint64_t sketch_bucket(uint64_t hash, uint64_t buckets) {
  return ((hash >> 32) * buckets + (((hash & 0xffffffffull) * buckets) >> 32)) >> 32;
}

constexpr bool sketch_negative(uint64_t hash) { return (hash & 1) != 0; }

// Floats per bucket in the runtime tables: `block` rounded up so one bucket is whole SIMD
// vectors (8 or a multiple of 16 floats); the padding holds zeros.
constexpr int64_t sketch_bucket_stride(int64_t block) {
  return block <= 8 ? 8 : (block + 15) / 16 * 16;
}

struct SketchHashRow {
  // (buckets + salient_buckets, sketch_bucket_stride(block)) fp32: the main buckets, then the
  // salient ones; each bucket's floats past `block` are zero.
  const float* table;
  uint64_t buckets, seed;
  uint64_t salient_buckets, salient_seed;  // salient_buckets is 0 without a salient set
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

  int64_t blocks_per_row() const { return (n_in + block - 1) / block; }
  int64_t stride() const { return sketch_bucket_stride(block); }
  bool salient(int64_t row, int64_t b) const {
    if (salient_mask == nullptr) return false;
    const int64_t bit = row * blocks_per_row() + b;
    return (salient_mask[bit / 64] >> (bit % 64)) & 1;
  }
};

// Highway SIMD (dynamic dispatch), multithreaded over output rows. One token: decoding is fused
// into the dot products. Several tokens: bands of rows are decoded once per 64 tokens into an
// L2-sized buffer that the register-tiled dense kernel multiplies.
void sketch_matmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
// Plain scalar reference: decodes each row, double accumulation rounded to fp32.
void sketch_matmul_reference(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
// Row `row` of W (n_in floats), scalar.
void sketch_decode_row(const SketchMatrix& m, int64_t row, float* out);

}  // namespace subbit
