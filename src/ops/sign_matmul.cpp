#include "ops/sign_matmul.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sign_matmul.cpp"
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/parallel.h"
#include "ops/thread_scratch.h"

// Two kernels:
//
//  * "wide" (mask design; rows in register tiles): Σ_c S[r][c]·x[c] = 2·P[r] − T with
//    P[r] = Σ_{c: bit=1} x[c] and T = Σ_c x[c], so each weight costs one masked add. A tile of
//    kRows rows x kTokens tokens walks the columns; every loaded x vector feeds kRows masked adds
//    and every loaded mask kTokens of them; one horizontal sum per row at the end. On AVX-512 a
//    16-bit chunk mask is one kmovw from the packed row plus vaddps{k}; other targets broadcast 32
//    row bits, move bit j to the sign with a variable shift and select. Best for few long rows
//    (LittleBit stage 1 at small rank) and the only kernel below AVX2.
//  * "lut" (T-MAC-style lookup, AVX2 and AVX-512; rows in lanes): per token and group of 4
//    columns a 16-entry table of the signed sums ±x0 ±x1 ±x2 ±x3 (4 FMAs per table). N consecutive
//    rows sit in the lanes of a vector: one load from the block layout (sign_blocks; a gather from
//    the file-order words when the caller has none) fetches the 32 bits of a 32-column block for
//    the N rows, then each group of 4 columns is shift + vpermps (the permute reads only the low 4
//    bits of each lane, so no masking) + add: 3 ops per 4·N weights instead of 2 per N, no
//    horizontal sums, and N outputs per store. Used when there are at least kLutMinRows rows.
//
// Measured on the development machine (Zen 5, AVX-512, one thread, busy machine so ±20%), time
// per call, lut vs wide:
//   one token   16 x 4096: 2.4 vs 1.4 us      80 x 4096: 6.2 vs 6.9 us     512 x 4096: 37 vs 45 us
//               4096 x 80: 6.9 vs 16.6 us   4096 x 544: 35 vs 52 us     4096 x 4096: 296 vs 368 us
//   batched     512 x 4096, 64 tokens: 1.30 vs 2.23 ms      4096 x 80, 512 tokens: 2.0 vs 6.3 ms
// A third kernel (mask design with rows in lanes: bit test + masked add of the broadcast x per
// column) lost to lut everywhere (4096 x 80: 14 us, 4096 x 544: 105 us) and to wide on SSE4, so
// it was dropped.
//
// Threads: a grid of row chunks x token chunks; with few tokens and rows <= cols (stage 1) the
// columns are split instead, each part writing its own partial sums. Small calls stay on one
// thread.

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;
using DI = hn::RebindToSigned<DF>;
using VF = hn::Vec<DF>;
using VU = hn::Vec<DU>;

constexpr int64_t kLanes = static_cast<int64_t>(hn::MaxLanes(DF()));
static_assert(32 % kLanes == 0, "a 32-column block must be whole vectors");
constexpr int kChunks = static_cast<int>(32 / kLanes);  // vectors per 32-column block

#undef SUBBIT_SIGN_AVX512
#if HWY_TARGET <= HWY_AVX3
#define SUBBIT_SIGN_AVX512 1
#else
#define SUBBIT_SIGN_AVX512 0
#endif

// Register tiles. AVX-512 has 32 vector registers, the others 16.
#if SUBBIT_SIGN_AVX512
constexpr int kWideRows1 = 8;  // one token: 8 independent accumulator chains
constexpr int kWideRowsB = 4;  // batched: 4 rows x 4 tokens
#else
constexpr int kWideRows1 = 4;
constexpr int kWideRowsB = 2;
#endif
constexpr int kTokTile = 4;

// Bits of columns [c, c + 32) of a row, c % 32 == 0.
HWY_INLINE uint32_t BlockBits(const uint64_t* row, int64_t c) {
  return static_cast<uint32_t>(row[c >> 6] >> (c & 32));
}

#if SUBBIT_SIGN_AVX512
HWY_INLINE VF MaskedAdd(VF acc, __mmask16 m, VF x) {
  return VF{_mm512_mask_add_ps(acc.raw, m, acc.raw, x.raw)};
}
// Mask of columns [c, c + 16) of a row, c % 16 == 0: one kmovw from the packed row.
HWY_INLINE __mmask16 ChunkMask(const uint64_t* row, int64_t c) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(row) + (c >> 3);
#if defined(__GNUC__)
  // GCC turns a plain load into movzx + kmovw (two ops); kmovw from memory is one. Measured on
  // Zen 5, 512 x 4096, one token: 42 -> 52 Gweights/s.
  __mmask16 m;
  asm("kmovw %1, %0" : "=k"(m) : "m"(*reinterpret_cast<const uint16_t*>(p)));
  return m;
#else
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bits;
#endif
}
#endif

// Without AVX-512 mask registers, a 32-column block's bits are broadcast to every lane and lane j
// shifted left by kBitToSign[j] = 31 − j, which moves bit j (column j of the block) to the sign.
alignas(64) constexpr uint32_t kBitToSign[32] = {31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21,
                                                 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
                                                 9,  8,  7,  6,  5,  4,  3,  2,  1,  0};

// x where the sign bit of `sel` is set, else 0.
HWY_INLINE VF IfSignBit(VU sel, VF x) {
  const DF df;
#if HWY_TARGET <= HWY_SSE4
  // blendvps looks at the sign bit only.
  return hn::IfNegativeThenElse(hn::BitCast(df, sel), x, hn::Zero(df));
#else
  // SSSE3 lacks blendv and the scalar IfNegativeThenElse compares floats (−0.0 is not < 0).
  const DI di;
  return hn::And(hn::BitCast(df, hn::BroadcastSignBit(hn::BitCast(di, sel))), x);
#endif
}

HWY_INLINE float RangeSum(const float* p, int64_t n) {
  const DF df;
  VF a0 = hn::Zero(df), a1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    a0 = hn::Add(a0, hn::LoadU(df, p + i));
    a1 = hn::Add(a1, hn::LoadU(df, p + i + kLanes));
  }
  for (; i + kLanes <= n; i += kLanes) a0 = hn::Add(a0, hn::LoadU(df, p + i));
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(a0, a1)));
  for (; i < n; ++i) sum += p[i];
  return sum;
}

// out[i] = x[i]·scale[i] for i < n.
HWY_INLINE void ScaleColumns(const float* HWY_RESTRICT x, const float* HWY_RESTRICT scale, int64_t n,
                             float* HWY_RESTRICT out) {
  const DF df;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    hn::StoreU(hn::Mul(hn::LoadU(df, x + i), hn::LoadU(df, scale + i)), df, out + i);
  for (; i < n; ++i) out[i] = x[i] * scale[i];
}

// ------------------------------------------------------------------ wide kernel (rows in tiles)

// One column block of a WideRange call: columns [c0, c1), of which [c0, c_full) are whole
// 32-column blocks read from x and [c_full, c1) is the zero-padded copy `tail`.
struct WideBlock {
  const uint64_t* words;
  int64_t wpr;
  int64_t rows;  // leading dimension of y
  float* y;
  int64_t c0, c_full, c1;
  int64_t tok_base;      // token of x, tail[0] and tsum[0]
  const float* x;        // (token - tok_base, x_stride): the (scaled) activations from column c0
  int64_t x_stride;
  const float* tail;       // (token - tok_base, 32)
  const float* tsum;       // (token - tok_base): Σ_{c0 <= c < c1} x[token][c]
  const float* row_scale;  // (rows) or null
  bool accumulate;         // y += result instead of y = result
};

// acc[r][t] += Σ over the 32 columns at c of bit(r, c)·x[t][c]; xc[t] points at x[t][c].
template <int kRows, int kTokens>
HWY_INLINE void WideBlock32(const uint64_t* const* rp, int64_t c, const float* const* xc,
                            VF (&acc)[kRows][kTokens]) {
  const DF df;
#if SUBBIT_SIGN_AVX512
  HWY_UNROLL(16)
  for (int k = 0; k < kChunks; ++k) {
    VF xv[kTokens];
    HWY_UNROLL(16)
    for (int t = 0; t < kTokens; ++t) xv[t] = hn::LoadU(df, xc[t] + k * kLanes);
    HWY_UNROLL(16)
    for (int r = 0; r < kRows; ++r) {
      const __mmask16 m = ChunkMask(rp[r], c + k * kLanes);
      HWY_UNROLL(16)
      for (int t = 0; t < kTokens; ++t) acc[r][t] = MaskedAdd(acc[r][t], m, xv[t]);
    }
  }
#else
  // Lane i of chunk k holds column c + k·N + i; shifting left by kBitToSign[k·N + i] moves its bit
  // to the sign.
  const DU du;
  VU bits[kRows];
  HWY_UNROLL(16)
  for (int r = 0; r < kRows; ++r) bits[r] = hn::Set(du, BlockBits(rp[r], c));
  HWY_UNROLL(16)
  for (int k = 0; k < kChunks; ++k) {
    const VU shift = hn::Load(du, kBitToSign + k * kLanes);
    VF xv[kTokens];
    HWY_UNROLL(16)
    for (int t = 0; t < kTokens; ++t) xv[t] = hn::LoadU(df, xc[t] + k * kLanes);
    HWY_UNROLL(16)
    for (int r = 0; r < kRows; ++r) {
      const VU sel = hn::Shl(bits[r], shift);
      HWY_UNROLL(16)
      for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::Add(acc[r][t], IfSignBit(sel, xv[t]));
    }
  }
#endif
}

template <int kRows, int kTokens>
HWY_INLINE void WideTile(const WideBlock& b, int64_t row0, int64_t tok0) {
  const DF df;
  const uint64_t* rp[kRows];
  HWY_UNROLL(16)
  for (int r = 0; r < kRows; ++r) rp[r] = b.words + (row0 + r) * b.wpr;
  const float* xp[kTokens];
  HWY_UNROLL(16)
  for (int t = 0; t < kTokens; ++t) xp[t] = b.x + (tok0 + t - b.tok_base) * b.x_stride;
  VF acc[kRows][kTokens];
  HWY_UNROLL(16)
  for (int r = 0; r < kRows; ++r) HWY_UNROLL(16)
  for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::Zero(df);

  const float* xc[kTokens];
  for (int64_t c = b.c0; c < b.c_full; c += 32) {
    HWY_UNROLL(16)
    for (int t = 0; t < kTokens; ++t) xc[t] = xp[t] + (c - b.c0);
    WideBlock32<kRows, kTokens>(rp, c, xc, acc);
  }
  if (b.c_full < b.c1) {
    HWY_UNROLL(16)
    for (int t = 0; t < kTokens; ++t) xc[t] = b.tail + (tok0 + t - b.tok_base) * 32;
    WideBlock32<kRows, kTokens>(rp, b.c_full, xc, acc);
  }

  HWY_UNROLL(16)
  for (int r = 0; r < kRows; ++r) {
    HWY_UNROLL(16)
    for (int t = 0; t < kTokens; ++t) {
      const float p = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      float v = 2.0f * p - b.tsum[tok0 + t - b.tok_base];
      if (b.row_scale != nullptr) v *= b.row_scale[row0 + r];
      float& out = b.y[(tok0 + t) * b.rows + row0 + r];
      out = b.accumulate ? out + v : v;
    }
  }
}

// y[t][r] (= or +=) row_scale[r]·Σ_{c0 <= c < c1} S[r][c]·col_scale[c]·x[t][c] for rows
// [r0, r1), tokens [t0, t1). c0 % 64 == 0, and c1 % 64 == 0 or c1 == cols.
void WideRange(const SignMatrix& s, const float* x, float* y, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, int64_t c0, int64_t c1, const SignScales& scales) {
  // Column blocks keep one block of x rows (kTokBlock x 32 KiB) in L2 while the tiles stream;
  // scaled activations are copied a block at a time, so those blocks are 4x narrower.
  const int64_t col_block = scales.col_scale != nullptr ? 2048 : 8192;
  constexpr int64_t kTokBlock = 16;
  float* scaled = scales.col_scale != nullptr
                      ? thread_scratch<float>(ThreadScratchSlot::SignScaledInputs,
                                              size_t(kTokBlock * col_block))
                      : nullptr;  // (kTokBlock, col_block)
  alignas(64) float tail[kTokBlock * 32];
  float tsum[kTokBlock];
  WideBlock b;
  b.words = s.words;
  b.wpr = s.words_per_row();
  b.rows = s.rows;
  b.y = y;
  b.tail = tail;
  b.tsum = tsum;
  b.row_scale = scales.row_scale;
  for (int64_t cb = c0; cb < c1; cb += col_block) {
    const int64_t ce = std::min(c1, cb + col_block);
    b.c0 = cb;
    b.c1 = ce;
    b.c_full = cb + ((ce - cb) & ~int64_t{31});
    b.accumulate = scales.accumulate || cb > c0;
    for (int64_t tb = t0; tb < t1; tb += kTokBlock) {
      const int64_t te = std::min(t1, tb + kTokBlock);
      b.tok_base = tb;
      if (scaled != nullptr) {
        for (int64_t t = tb; t < te; ++t)
          ScaleColumns(x + t * s.cols + cb, scales.col_scale + cb, ce - cb,
                       scaled + (t - tb) * (ce - cb));
        b.x = scaled;
        b.x_stride = ce - cb;
      } else {
        b.x = x + tb * s.cols + cb;
        b.x_stride = s.cols;
      }
      for (int64_t t = tb; t < te; ++t) {
        const float* xt = b.x + (t - tb) * b.x_stride;  // from column cb
        tsum[t - tb] = RangeSum(xt, ce - cb);
        if (b.c_full < ce) {
          float* tl = tail + (t - tb) * 32;
          std::fill(tl, tl + 32, 0.0f);
          std::copy(xt + (b.c_full - cb), xt + (ce - cb), tl);
        }
      }
      int64_t r = r0;
      if (te - tb >= kTokTile) {
        for (; r + kWideRowsB <= r1; r += kWideRowsB) {
          int64_t t = tb;
          for (; t + kTokTile <= te; t += kTokTile) WideTile<kWideRowsB, kTokTile>(b, r, t);
          for (; t < te; ++t) WideTile<kWideRowsB, 1>(b, r, t);
        }
        for (; r < r1; ++r) {
          int64_t t = tb;
          for (; t + kTokTile <= te; t += kTokTile) WideTile<1, kTokTile>(b, r, t);
          for (; t < te; ++t) WideTile<1, 1>(b, r, t);
        }
      } else {
        for (; r + kWideRows1 <= r1; r += kWideRows1)
          for (int64_t t = tb; t < te; ++t) WideTile<kWideRows1, 1>(b, r, t);
        for (; r < r1; ++r)
          for (int64_t t = tb; t < te; ++t) WideTile<1, 1>(b, r, t);
      }
    }
  }
}

// ----------------------------------------------------- lookup-table kernel (rows in lanes, AVX2+)
#undef SUBBIT_SIGN_LUT
#if HWY_TARGET <= HWY_AVX2
#define SUBBIT_SIGN_LUT 1

// T-MAC-style tables over groups of 4 columns: entry n of group g is
// Σ_{i<4} (bit i of n ? +1 : −1)·x[4g + i], so a row's nibble for that group looks up its partial
// sum directly. With N rows in the lanes of a vector, one permute (vpermps: the index is the low 4
// bits of each lane, so the other nibbles need no masking) handles 4 columns of N rows:
// shift + permute + add per 4·N weights, against 2 ops per N weights for bit test + masked add.
// With fewer rows the table build is not amortised and the wide kernel is faster (measurements at
// the top of the file: 16 x 4096 wide wins, from 80 x 4096 lut does).
constexpr int64_t kLutMinRows = 64;
// Columns per table block: 2048 columns are 512 tables x 64 B = 32 KiB per token (x4 tokens when
// batched). With one to three tokens the block is 8192 columns (128 KiB of tables per token, in L2)
// so that a row tile's bits are read in one sweep: with 2048, the 28672 x 3168 stage ran each row
// twice, scattered, and got bound by DRAM latency once the layer's bits no longer fit in L3.
constexpr int64_t kLutColBlockBatched = 2048;
constexpr int64_t kLutColBlockSingle = 8192;
constexpr int kLutVecs = static_cast<int>(16 / kLanes);  // vectors per table (1 or 2)
#if SUBBIT_SIGN_AVX512
constexpr int kLutRV1 = 4;  // one token: 4 row vectors (64 rows) x 2 group phases = 8 chains
constexpr int kLutSets1 = 2;
constexpr int kLutRVB = 2;  // batched: 2 row vectors x 4 tokens
#else
constexpr int kLutRV1 = 2;
constexpr int kLutSets1 = 2;
constexpr int kLutRVB = 1;
#endif

// Signs of column i (bit i of the lane number n) for the 16 table entries.
alignas(64) constexpr float kNibbleSigns[4][16] = {
    {-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1},
    {-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1},
    {-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1},
    {-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1}};

// Tables of tokens [t0, t1) over columns [c0, c1), c0 % 32 == 0, padded with zero columns to
// whole 32-column blocks: tables + ((t − t0)·groups + g)·16 with groups = ceil((c1 − c0)/32)·8.
// With col_scale the activations are scaled first, a token at a time, in `scaled` (c1 − c0).
HWY_INLINE void BuildTables(const float* x, int64_t cols, int64_t t0, int64_t t1, int64_t c0,
                            int64_t c1, const float* col_scale, float* HWY_RESTRICT scaled,
                            float* HWY_RESTRICT tables) {
  const DF df;
  const int64_t groups = (c1 - c0 + 31) / 32 * 8;
  const int64_t full = (c1 - c0) / 4;  // groups with 4 real columns
  VF sign[4][kLutVecs];
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < kLutVecs; ++h) {
      sign[i][h] = hn::Load(df, kNibbleSigns[i] + h * kLanes);
#if defined(__GNUC__)
      // Keep the signs in registers so each FMA takes its x as an embedded broadcast: 5 ops per
      // table instead of 9 (16 x 4096: 4.1 -> 3.2 us).
      asm volatile("" : "+v"(sign[i][h].raw));
#endif
    }
  for (int64_t t = t0; t < t1; ++t) {
    const float* xt = x + t * cols + c0;
    if (col_scale != nullptr) {
      ScaleColumns(xt, col_scale + c0, c1 - c0, scaled);
      xt = scaled;
    }
    float* out = tables + (t - t0) * groups * 16;
    for (int64_t g = 0; g < full; ++g, out += 16) {
      const float* xg = xt + 4 * g;
      HWY_UNROLL(2)
      for (int h = 0; h < kLutVecs; ++h) {
        VF lut = hn::Mul(sign[0][h], hn::Set(df, xg[0]));
        lut = hn::MulAdd(sign[1][h], hn::Set(df, xg[1]), lut);
        lut = hn::MulAdd(sign[2][h], hn::Set(df, xg[2]), lut);
        lut = hn::MulAdd(sign[3][h], hn::Set(df, xg[3]), lut);
        hn::Store(lut, df, out + h * kLanes);
      }
    }
    for (int64_t g = full; g < groups; ++g, out += 16) {
      float xg[4];
      for (int i = 0; i < 4; ++i) xg[i] = c0 + 4 * g + i < c1 ? xt[4 * g + i] : 0.0f;
      for (int h = 0; h < kLutVecs; ++h) {
        VF lut = hn::Zero(df);
        for (int i = 0; i < 4; ++i) lut = hn::MulAdd(sign[i][h], hn::Set(df, xg[i]), lut);
        hn::Store(lut, df, out + h * kLanes);
      }
    }
  }
}

// Entry (idx & 15) of the 16-entry table in lo (and hi, the entries 8..15 on AVX2), per lane.
HWY_INLINE VF Lookup(VF lo, VF hi, VU idx) {
#if SUBBIT_SIGN_AVX512
  (void)hi;
  return VF{_mm512_permutexvar_ps(idx.raw, lo.raw)};
#else
  const __m256 from_lo = _mm256_permutevar8x32_ps(lo.raw, idx.raw);
  const __m256 from_hi = _mm256_permutevar8x32_ps(hi.raw, idx.raw);
  return VF{
      _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx.raw, 28)))};
#endif
}

// Rows [row0, row0 + kRV·N), tokens [tok0, tok0 + kTokens) whose tables start at `tables`
// (token stride groups·16), columns [c0, c1) (c0 % 32 == 0). While it runs, the same columns of
// the next pf_rows rows (the next tile) are prefetched, spread evenly over the column steps: the
// gathers walk kRV·N rows side by side, which the hardware prefetchers do not follow, and once a
// layer's bits no longer fit in the caches the kernel was bound by DRAM latency (one token,
// 28672 x 8192 sign matrix: 7.1 ms without, see bench_gemv for with).
//
// With s.blocks (kFromBlocks) the bits come from the block layout: one contiguous load per row
// vector and block, consecutive blocks adjacent, which the hardware prefetchers follow unaided.
template <int kRV, int kTokens, int kSets, bool kFromBlocks>
HWY_INLINE void LutTile(const SignMatrix& s, int64_t row0, int64_t c0, int64_t c1,
                        const float* tables, int64_t groups, float* y, int64_t tok0,
                        const float* row_scale, bool accumulate, int64_t pf_rows) {
  const DF df;
  const DU du;
  const DI di;
  const int64_t wpr = s.words_per_row();
  VF acc[kSets][kRV][kTokens];
  HWY_UNROLL(16)
  for (int k = 0; k < kSets; ++k) HWY_UNROLL(16)
  for (int v = 0; v < kRV; ++v) HWY_UNROLL(16)
  for (int t = 0; t < kTokens; ++t) acc[k][v][t] = hn::Zero(df);
  const uint64_t* base = s.words + row0 * wpr;
  // 32-bit word of (row0 + i, block b) is at uint32 index i·2·wpr + b from base.
  const auto index = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(2 * wpr)));
  // Prefetch (row, line) pairs of the next tile in row-major order, per_step per column step.
  const uint64_t* pf_base = base + kRV * kLanes * wpr + (c0 >> 6);
  const int64_t seg_lines = (c1 - c0 + 511) / 512;  // 64-byte lines per row segment
  const int64_t steps = (c1 - c0 + 31) / 32;
  const int64_t per_step = (pf_rows * seg_lines + steps - 1) / steps;
  int64_t pf_row = 0, pf_line = 0;
  const float* tg = tables;
  // Block layout: row vector v of this tile starts at word ((row0 + v·N)/16·blocks + b)·16 +
  // (row0 + v·N) % 16 for column block b.
  const int64_t blocks_per_row = (s.cols + 31) / 32;
  for (int64_t c = c0; c < c1; c += 32, tg += 8 * 16) {
    VU bits[kRV];
    if constexpr (kFromBlocks) {
      HWY_UNROLL(16)
      for (int v = 0; v < kRV; ++v) {
        const int64_t r = row0 + v * kLanes;
        bits[v] = hn::LoadU(du, s.blocks + ((r >> 4) * blocks_per_row + (c >> 5)) * 16 + (r & 15));
        // The same block of the next tile, so that tile starts from L2: once a layer's bits no
        // longer fit in the caches, the prefetchers alone leave short rows (an LM head's
        // sign(U), 17 blocks a row) bound by memory latency.
        const int64_t next = r + kRV * kLanes;
        if (v * kLanes < pf_rows)
          __builtin_prefetch(
              s.blocks + ((next >> 4) * blocks_per_row + (c >> 5)) * 16 + (next & 15), 0, 2);
      }
    } else {
      for (int64_t i = 0; i < per_step && pf_row < pf_rows; ++i) {
        __builtin_prefetch(pf_base + pf_row * wpr + pf_line * 8, 0, 2);  // to L2 (prefetcht1)
        if (++pf_line == seg_lines) {
          pf_line = 0;
          ++pf_row;
        }
      }
      HWY_UNROLL(16)
      for (int v = 0; v < kRV; ++v) {
        const int32_t* p = reinterpret_cast<const int32_t*>(base + v * kLanes * wpr) + (c >> 5);
        bits[v] = hn::BitCast(du, hn::GatherIndex(di, p, index));
      }
    }
    HWY_UNROLL(8)
    for (int g = 0; g < 8; ++g) {
      VU idx[kRV];
      HWY_UNROLL(16)
      for (int v = 0; v < kRV; ++v) idx[v] = hn::ShiftRightSame(bits[v], 4 * g);
      HWY_UNROLL(16)
      for (int t = 0; t < kTokens; ++t) {
        const float* tab = tg + (t * groups + g) * 16;
        const VF lo = hn::Load(df, tab);
        const VF hi = kLutVecs > 1 ? hn::Load(df, tab + kLanes * (kLutVecs - 1)) : lo;
        HWY_UNROLL(16)
        for (int v = 0; v < kRV; ++v)
          acc[g % kSets][v][t] = hn::Add(acc[g % kSets][v][t], Lookup(lo, hi, idx[v]));
      }
    }
  }
  HWY_UNROLL(16)
  for (int t = 0; t < kTokens; ++t) {
    HWY_UNROLL(16)
    for (int v = 0; v < kRV; ++v) {
      VF sum = acc[0][v][t];
      HWY_UNROLL(16)
      for (int k = 1; k < kSets; ++k) sum = hn::Add(sum, acc[k][v][t]);
      float* out = y + (tok0 + t) * s.rows + row0 + v * kLanes;
      if (row_scale != nullptr) sum = hn::Mul(sum, hn::LoadU(df, row_scale + row0 + v * kLanes));
      if (accumulate) sum = hn::Add(sum, hn::LoadU(df, out));
      hn::StoreU(sum, df, out);
    }
  }
}

// Rows [r0, r1) of tokens [t, t + nt) over the columns [cb, ce) whose tables were built.
template <bool kFromBlocks>
HWY_INLINE void LutRows(const SignMatrix& s, int64_t r0, int64_t r1, int64_t cb, int64_t ce,
                        const float* tables, int64_t groups, float* y, int64_t t, int64_t nt,
                        const float* row_scale, bool acc) {
  // Rows of the next tile, to prefetch while a tile of `tile` rows starting at r runs.
  const auto next = [&](int64_t r, int64_t tile) {
    return std::clamp<int64_t>(r1 - (r + tile), 0, tile);
  };
  int64_t r = r0;
  if (nt == kTokTile) {
    constexpr int64_t kTile = kLutRVB * kLanes;
    for (; r + kTile <= r1; r += kTile)
      LutTile<kLutRVB, kTokTile, 1, kFromBlocks>(s, r, cb, ce, tables, groups, y, t,
                                                 row_scale, acc, next(r, kTile));
    for (; r < r1; r += kLanes)
      LutTile<1, kTokTile, 1, kFromBlocks>(s, r, cb, ce, tables, groups, y, t,
                                           row_scale, acc, next(r, kLanes));
  } else {
    constexpr int64_t kTile = kLutRV1 * kLanes;
    for (int64_t u = 0; u < nt; ++u) {
      const float* tu = tables + u * groups * 16;
      for (r = r0; r + kTile <= r1; r += kTile)
        LutTile<kLutRV1, 1, kLutSets1, kFromBlocks>(s, r, cb, ce, tu, groups, y, t + u,
                                                    row_scale, acc, next(r, kTile));
      for (; r < r1; r += kLanes)
        LutTile<1, 1, kLutSets1, kFromBlocks>(s, r, cb, ce, tu, groups, y, t + u,
                                              row_scale, acc, next(r, kLanes));
    }
  }
}

// y[t][r] (= or +=) row_scale[r]·Σ_{c0 <= c < c1} S[r][c]·col_scale[c]·x[t][c] for rows
// [r0, r1) (r1 − r0 a multiple of N), tokens [t0, t1); c0 % 64 == 0 and c1 % 64 == 0 or
// c1 == cols.
void LutRange(const SignMatrix& s, const float* x, float* y, int64_t r0, int64_t r1, int64_t t0,
              int64_t t1, int64_t c0, int64_t c1, const SignScales& scales) {
  const int64_t col_block = t1 - t0 >= kTokTile ? kLutColBlockBatched : kLutColBlockSingle;
  float* tables = thread_scratch<float>(ThreadScratchSlot::SignTables,
                                        size_t((kTokTile - 1) * (kLutColBlockSingle / 4) * 16));
  float* scaled = scales.col_scale != nullptr
                      ? thread_scratch<float>(ThreadScratchSlot::SignScaledInputs,
                                              size_t(kLutColBlockSingle))
                      : nullptr;  // (col_block): one token's scaled activations
  static_assert(kTokTile * kLutColBlockBatched <= (kTokTile - 1) * kLutColBlockSingle);
  for (int64_t cb = c0; cb < c1; cb += col_block) {
    const int64_t ce = std::min(c1, cb + col_block);
    const int64_t groups = (ce - cb + 31) / 32 * 8;
    const bool acc = scales.accumulate || cb > c0;
    for (int64_t t = t0; t < t1; t += kTokTile) {
      const int64_t nt = std::min<int64_t>(kTokTile, t1 - t);
      BuildTables(x, s.cols, t, t + nt, cb, ce, scales.col_scale, scaled, tables);
      if (s.blocks != nullptr)
        LutRows<true>(s, r0, r1, cb, ce, tables, groups, y, t, nt, scales.row_scale, acc);
      else
        LutRows<false>(s, r0, r1, cb, ce, tables, groups, y, t, nt, scales.row_scale, acc);
    }
  }
}
#else
#define SUBBIT_SIGN_LUT 0
#endif  // HWY_TARGET <= HWY_AVX2

// ------------------------------------------------------------ weighted sum of rows (yᵀ = cᵀ·S)

// y[c] = Σ_r coeffs[r]·S[r][c] = 2·Σ_{r: bit=1} coeffs[r] − Σ_r coeffs[r]. A tile of kBlocks
// 32-column blocks walks all rows; each row adds its broadcast coefficient to the lanes whose bit
// is set. out receives the tile's 32·kBlocks columns.
template <int kBlocks>
HWY_INLINE void CombineTile(const SignMatrix& s, const float* coeffs, float total, int64_t c0,
                            float* out) {
  const DF df;
  constexpr int kVecs = kBlocks * kChunks;
  const int64_t wpr = s.words_per_row();
  VF acc[kVecs];
  HWY_UNROLL(16)
  for (int k = 0; k < kVecs; ++k) acc[k] = hn::Zero(df);
  for (int64_t r = 0; r < s.rows; ++r) {
    const uint64_t* row = s.words + r * wpr;
    const VF cv = hn::Set(df, coeffs[r]);
#if SUBBIT_SIGN_AVX512
    HWY_UNROLL(16)
    for (int k = 0; k < kVecs; ++k) acc[k] = MaskedAdd(acc[k], ChunkMask(row, c0 + k * kLanes), cv);
#else
    const DU du;
    HWY_UNROLL(16)
    for (int b = 0; b < kBlocks; ++b) {
      const VU bits = hn::Set(du, BlockBits(row, c0 + 32 * b));
      HWY_UNROLL(16)
      for (int k = 0; k < kChunks; ++k) {
        const VU sel = hn::Shl(bits, hn::Load(du, kBitToSign + k * kLanes));
        acc[b * kChunks + k] = hn::Add(acc[b * kChunks + k], IfSignBit(sel, cv));
      }
    }
#endif
  }
  const VF two = hn::Set(df, 2.0f), minus_total = hn::Set(df, -total);
  HWY_UNROLL(16)
  for (int k = 0; k < kVecs; ++k)
    hn::StoreU(hn::MulAdd(two, acc[k], minus_total), df, out + k * kLanes);
}

// Tiles of 4 blocks (8 AVX-512 vectors: enough independent add chains), then single blocks; the
// last partial block goes through a padded copy (its bits past `cols` are zero padding).
void SignCombineRows(const SignMatrix& s, const float* coeffs, float* y) {
  const float total = RangeSum(coeffs, s.rows);
  int64_t c0 = 0;
  for (; c0 + 128 <= s.cols; c0 += 128) CombineTile<4>(s, coeffs, total, c0, y + c0);
  for (; c0 + 32 <= s.cols; c0 += 32) CombineTile<1>(s, coeffs, total, c0, y + c0);
  if (c0 < s.cols) {
    alignas(64) float tail[32];
    CombineTile<1>(s, coeffs, total, c0, tail);
    std::copy(tail, tail + (s.cols - c0), y + c0);
  }
}

// ------------------------------------------------------------------------------- dispatch

// y[t][r] (= or +=) row_scale[r]·Σ_{c0 <= c < c1} S[r][c]·col_scale[c]·x[t][c] for rows
// [ra, rb), tokens [ta, tb). Rows below lut_rows (a multiple of N) use the lookup-table kernel,
// the others the wide kernel.
void RangeAnyKernel(const SignMatrix& s, const float* x, float* y, int64_t ra, int64_t rb,
                    int64_t ta, int64_t tb, int64_t c0, int64_t c1, int64_t lut_rows,
                    const SignScales& scales) {
  const int64_t split = std::clamp(lut_rows, ra, rb);
#if SUBBIT_SIGN_LUT
  if (split > ra) LutRange(s, x, y, ra, split, ta, tb, c0, c1, scales);
#endif
  if (rb > split) WideRange(s, x, y, split, rb, ta, tb, c0, c1, scales);
}

// The rows [0, n) that the lookup-table kernel takes: a multiple of N, 0 below kLutMinRows rows
// (the wide kernel takes the rest).
int64_t LutRowCount(const SignMatrix& s) {
#if SUBBIT_SIGN_LUT
  return s.rows >= kLutMinRows ? s.rows - s.rows % kLanes : 0;
#else
  (void)s;
  return 0;
#endif
}

void SignMatmulBlock(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                     int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                     const SignScales& scales) {
  if (row_begin >= row_end || tokens <= 0) return;
  if (col_begin >= col_end) {
    if (!scales.accumulate)
      for (int64_t t = 0; t < tokens; ++t)
        std::fill(y + t * s.rows + row_begin, y + t * s.rows + row_end, 0.0f);
    return;
  }
  RangeAnyKernel(s, x, y, row_begin, row_end, 0, tokens, col_begin, col_end, LutRowCount(s),
                 scales);
}

void SignMatmul(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                const SignScales& scales) {
  const int64_t rows = s.rows, cols = s.cols;
  if (rows <= 0 || tokens <= 0) return;
  if (cols <= 0) {
    if (!scales.accumulate) std::fill(y, y + rows * tokens, 0.0f);
    return;
  }
  const int64_t threads = omp_in_parallel() ? 1 : num_threads();
  const bool parallel =
      threads > 1 && double(rows) * double(cols) * double(tokens) >= kSignMinParallelWork;
  const int64_t lut_rows = LutRowCount(s);
#if SUBBIT_SIGN_LUT
  const int64_t row_tile = lut_rows > 0 ? kLutRV1 * kLanes : kWideRows1;
#else
  const int64_t row_tile = kWideRows1;
#endif

  const int64_t want = parallel ? 4 * threads : 1;  // work units, ~4 per thread to balance load
  const int64_t row_units = (rows + row_tile - 1) / row_tile;
  const int64_t tok_units = (tokens + kTokTile - 1) / kTokTile;

  if (parallel && tok_units < want && rows <= cols && cols >= 256 * threads) {
    // Few tokens and rows no longer than the columns (LittleBit stage 1, square 1-bit layers):
    // split the columns, so each part builds only the tables of its own columns (a row split would
    // rebuild all of them per chunk: 40% extra work at 512 x 4096) and there is parallelism even
    // for a handful of rows. Each part sums over its columns, then the parts are added (the row
    // scale distributes over the sum; only the first part accumulates into y).
    const int64_t per = ((cols + threads - 1) / threads + 63) & ~int64_t{63};
    const int64_t parts = (cols + per - 1) / per;
    float* partial = thread_scratch<float>(ThreadScratchSlot::SignPartialSums,
                                           size_t((parts - 1) * tokens * rows));
    parallel_for(parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        float* out = k == 0 ? y : partial + (k - 1) * tokens * rows;
        SignScales part = scales;
        part.accumulate = k == 0 && scales.accumulate;
        RangeAnyKernel(s, x, out, 0, rows, 0, tokens, k * per, std::min(cols, (k + 1) * per),
                       lut_rows, part);
      }
    });
    for (int64_t k = 1; k < parts; ++k) {
      const float* p = partial + (k - 1) * tokens * rows;
      for (int64_t i = 0; i < tokens * rows; ++i) y[i] += p[i];
    }
    return;
  }

  // Otherwise a grid of row chunks x token chunks, split by tokens first: a token chunk builds the
  // tables of its own tokens only, and threads writing whole token rows of y share no cache lines
  // (row chunks met mid-line in every token row of y; rows first, 4096 x 80 with 512 tokens took
  // as long on two threads as on one).
  const int64_t nt0 = std::min(tok_units, want);
  const int64_t nr0 = std::min(row_units, (want + nt0 - 1) / nt0);
  const int64_t row_chunk = (row_units + nr0 - 1) / nr0 * row_tile;
  const int64_t tok_chunk = (tok_units + nt0 - 1) / nt0 * kTokTile;
  const int64_t nr = (rows + row_chunk - 1) / row_chunk;
  const int64_t nt = (tokens + tok_chunk - 1) / tok_chunk;
  parallel_for(nr * nt, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t ra = (u / nt) * row_chunk, rb = std::min(rows, ra + row_chunk);
      const int64_t ta = (u % nt) * tok_chunk, tb = std::min(tokens, ta + tok_chunk);
      RangeAnyKernel(s, x, y, ra, rb, ta, tb, 0, cols, lut_rows, scales);
    }
  });
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subbit {

HWY_EXPORT(SignMatmul);
HWY_EXPORT(SignMatmulBlock);
HWY_EXPORT(SignCombineRows);

void sign_matmul(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                 const SignScales& scales) {
  HWY_DYNAMIC_DISPATCH(SignMatmul)(s, x, y, tokens, scales);
}

void sign_matmul_block(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                       int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                       const SignScales& scales) {
  HWY_DYNAMIC_DISPATCH(SignMatmulBlock)(s, x, y, tokens, row_begin, row_end, col_begin, col_end,
                                        scales);
}

void sign_combine_rows(const SignMatrix& s, const float* coeffs, float* y) {
  HWY_DYNAMIC_DISPATCH(SignCombineRows)(s, coeffs, y);
}

void pack_signs(const float* values, int64_t rows, int64_t cols, uint64_t* words) {
  const int64_t wpr = sign_words_per_row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = values + r * cols;
    for (int64_t w = 0; w < wpr; ++w) {
      const int64_t c0 = w * 64, n = std::min<int64_t>(64, cols - c0);
      uint64_t bits = 0;
      // !(v < 0): 0, -0.0 and NaN all pack as +1.
      for (int64_t i = 0; i < n; ++i) bits |= uint64_t(!(row[c0 + i] < 0.0f)) << i;
      words[r * wpr + w] = bits;
    }
  }
}

std::vector<uint32_t> sign_blocks(const SignMatrix& s) {
  const int64_t groups = (s.rows + 15) / 16, blocks = (s.cols + 31) / 32, wpr = s.words_per_row();
  std::vector<uint32_t> out(size_t(groups * blocks * 16), 0u);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t b = 0; b < blocks; ++b)
      out[size_t(((r / 16) * blocks + b) * 16 + r % 16)] =
          uint32_t(s.words[r * wpr + b / 2] >> (32 * (b % 2)));
  return out;
}

void unpack_signs(const SignMatrix& s, float* out) {
  const int64_t wpr = s.words_per_row();
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c)
      out[r * s.cols + c] = (s.words[r * wpr + c / 64] >> (c % 64)) & 1 ? 1.0f : -1.0f;
}

void sign_matmul_reference(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                           const SignScales& scales) {
  const int64_t wpr = s.words_per_row();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * s.cols;
    for (int64_t r = 0; r < s.rows; ++r) {
      const uint64_t* row = s.words + r * wpr;
      double sum = 0;
      for (int64_t c = 0; c < s.cols; ++c) {
        const double v = scales.col_scale ? double(xt[c]) * scales.col_scale[c] : double(xt[c]);
        sum += (row[c / 64] >> (c % 64)) & 1 ? v : -v;
      }
      if (scales.row_scale) sum *= scales.row_scale[r];
      float& out = y[t * s.rows + r];
      out = scales.accumulate ? float(double(out) + sum) : float(sum);
    }
  }
}

void sign_combine_rows_reference(const SignMatrix& s, const float* coeffs, float* y) {
  const int64_t wpr = s.words_per_row();
  for (int64_t c = 0; c < s.cols; ++c) {
    double sum = 0;
    for (int64_t r = 0; r < s.rows; ++r)
      sum += (s.words[r * wpr + c / 64] >> (c % 64)) & 1 ? double(coeffs[r]) : -double(coeffs[r]);
    y[c] = float(sum);
  }
}

}  // namespace subbit
#endif
