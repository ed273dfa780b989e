// The products over a range of output rows: one token (two rows at a time, tables streamed),
// a few tokens (decoding fused), many tokens (rows decoded once, then the dense register tile).
//
// Per-target code (see ops/sketch_kernels.h for how the sketch product is put together): include
// it from a file that Highway's foreach_target.h compiles once per target, after hwy/highway.h.
#if defined(SUBBIT_OPS_SKETCH_PRODUCTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBBIT_OPS_SKETCH_PRODUCTS_INL_H_
#undef SUBBIT_OPS_SKETCH_PRODUCTS_INL_H_
#else
#define SUBBIT_OPS_SKETCH_PRODUCTS_INL_H_
#endif

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/dtype.h"
#include "ops/matmul_tile-inl.h"
#include "ops/parallel.h"
#include "ops/sketch_decode-inl.h"
#include "ops/sketch_hash-inl.h"
#include "ops/thread_scratch.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// With row bands the rows read each table band after band, in address order: the first touch of
// each line is a random load within the band, which the hardware prefetchers do not predict, so
// the one-token product requests the tables' lines a band ahead, a few per block pair (a burst
// of a whole band's lines at once was slower). `lines` lines from each hash row's `next`.
template <int kRows>
struct TableStream {
  const uint8_t* next[kRows];
  int64_t lines;
};

// Streams the tables only when they are larger than L2 (smaller ones stay cached between rows).
constexpr int64_t kStreamTableBytes = int64_t{1} << 20;

// Hands out, row by row, the lines of the main tables not yet requested up to the end of the
// band after a row's: the tables one band ahead of the rows being multiplied.
template <int kRows>
class TableStreamer {
 public:
  TableStreamer(const SketchMatrix& m, const Setup& s, int64_t row_begin)
      : m_(m), s_(s), on_(m.band_rows > 0 && !s.prefetch && s.table_bytes > kStreamTableBytes) {
    for (int k = 0; k < kRows; ++k)
      requested_[k] = sketch_band(m.hash_rows[k].buckets, m.n_out, m.band_rows, row_begin).first;
  }

  // What to request while multiplying rows up to `row`.
  TableStream<kRows> Through(int64_t row) {
    TableStream<kRows> stream{{}, 0};
    if (!on_) return stream;
    const int64_t ahead = std::min(m_.n_out - 1, row + m_.band_rows);  // a row of the next band
    const uint64_t bucket_bytes = uint64_t(m_.bucket_bytes());
    for (int k = 0; k < kRows; ++k) {
      const SketchBand band = sketch_band(m_.hash_rows[k].buckets, m_.n_out, m_.band_rows, ahead);
      const uint64_t end = band.first + band.count;
      stream.next[k] = s_.base[k] + requested_[k] * bucket_bytes;
      stream.lines =
          std::max(stream.lines, int64_t(((end - requested_[k]) * bucket_bytes + 63) / 64));
      requested_[k] = end;
    }
    return stream;
  }

 private:
  const SketchMatrix& m_;
  const Setup& s_;
  bool on_;
  uint64_t requested_[kRows];  // hash row k's buckets before this one have been requested
};

template <int kRows>
HWY_INLINE void StreamLine(TableStream<kRows>& t) {
  HWY_UNROLL(kSketchMaxRows)
  for (int k = 0; k < kRows; ++k) {
    hwy::Prefetch(t.next[k]);
    t.next[k] += 64;
  }
  --t.lines;
}

template <Decoder kDec, int kRows>
HWY_INLINE void Prefetch(const Setup& s, const RowEntries& e, int64_t b) {
  BlockRefs<kRows> r;
  Refs<kDec, kRows>(s, e, b, r);
  HWY_UNROLL(kSketchMaxRows)
  for (int k = 0; k < kRows; ++k) hwy::Prefetch(r.bucket[k]);
}

// acc += decode(block b) · x(block b).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void AccumulateBlock(const Setup& s, const RowEntries& e, int64_t b, const float* x,
                                hn::Vec<DF>& acc) {
  const DF df;
  const int64_t stride = Stride<kStride>(s);
  BlockRefs<kRows> r;
  Refs<kDec, kRows>(s, e, b, r);
  for (int64_t v = 0; v < stride; v += hn::Lanes(df))
    acc =
        hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r, v), hn::LoadU(df, x + b * stride + v), acc);
}

// Blocks b and b + 1 of two output rows: even0/even1 += block b, odd0/odd1 += block b + 1.
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void TwoBlocksTwoRows(const Setup& s, const RowEntries& e0, const RowEntries& e1,
                                 int64_t b, const float* x, hn::Vec<DF>& even0, hn::Vec<DF>& even1,
                                 hn::Vec<DF>& odd0, hn::Vec<DF>& odd1) {
  const DF df;
  const int64_t stride = Stride<kStride>(s);
  BlockRefs<kRows> r00, r01, r10, r11;  // (row, block)
  Refs<kDec, kRows>(s, e0, b, r00);
  Refs<kDec, kRows>(s, e1, b, r10);
  Refs<kDec, kRows>(s, e0, b + 1, r01);
  Refs<kDec, kRows>(s, e1, b + 1, r11);
  for (int64_t v = 0; v < stride; v += hn::Lanes(df)) {
    const auto x0 = hn::Load(df, x + b * stride + v), x1 = hn::Load(df, x + (b + 1) * stride + v);
    even0 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r00, v), x0, even0);
    even1 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r10, v), x0, even1);
    odd0 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r01, v), x1, odd0);
    odd1 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r11, v), x1, odd1);
  }
}

// Block b of two output rows, whose buckets span at least two vectors: even0/even1 += its even
// vectors, odd0/odd1 += its odd ones (one block at a time keeps half as many bucket pointers live
// as TwoBlocksTwoRows, which with two vectors per block ran out of registers).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void OneBlockTwoRows(const Setup& s, const RowEntries& e0, const RowEntries& e1,
                                int64_t b, const float* x, hn::Vec<DF>& even0, hn::Vec<DF>& even1,
                                hn::Vec<DF>& odd0, hn::Vec<DF>& odd1) {
  const DF df;
  const int64_t stride = Stride<kStride>(s), lanes = hn::Lanes(df);
  BlockRefs<kRows> r0, r1;
  Refs<kDec, kRows>(s, e0, b, r0);
  Refs<kDec, kRows>(s, e1, b, r1);
  for (int64_t v = 0; v < stride; v += 2 * lanes) {
    const auto x0 = hn::Load(df, x + b * stride + v), x1 = hn::Load(df, x + b * stride + v + lanes);
    even0 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r0, v), x0, even0);
    even1 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r1, v), x0, even1);
    odd0 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r0, v + lanes), x1, odd0);
    odd1 = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r1, v + lanes), x1, odd1);
  }
}

// Blocks per step of the two-row loop: one where a block spans an even number of vectors (its
// even and odd vectors then fill the four accumulators), else two.
template <class DF, int64_t kStride>
constexpr int64_t kPairStepBlocks =
    kStride >= 2 * hn::MaxLanes(DF()) && kStride % (2 * hn::MaxLanes(DF())) == 0 ? 1 : 2;

// Blocks b .. b + kPairStepBlocks - 1 of two output rows.
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void PairStep(const Setup& s, const RowEntries& e0, const RowEntries& e1, int64_t b,
                         const float* x, hn::Vec<DF>& even0, hn::Vec<DF>& even1, hn::Vec<DF>& odd0,
                         hn::Vec<DF>& odd1) {
  if constexpr (kPairStepBlocks<DF, kStride> == 1)
    OneBlockTwoRows<kDec, kRule, kRows, DF, kStride>(s, e0, e1, b, x, even0, even1, odd0, odd1);
  else
    TwoBlocksTwoRows<kDec, kRule, kRows, DF, kStride>(s, e0, e1, b, x, even0, even1, odd0, odd1);
}

// Two output rows, one token: Σ_blocks decode(block) · x(block) for each; x is blocked (block b
// at x + b · stride, zero past the block's weights) and 64-byte aligned. Two rows share each x
// load (the product is bound by loads: entries, codes and x), and even and odd blocks (even and
// odd vectors of a block, when a block spans two or more) accumulate separately so the FMA
// latency does not bound it. With e1 == nullptr, one row.
// Not inlined: the loop gets the registers to itself (inlined, GCC spills its indices).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_NOINLINE void RowDots(const Setup& s, const RowEntries& e0, const RowEntries* e1,
                          const float* x, float* y0, float* y1, TableStream<kRows>& stream) {
  const DF df;
  const int64_t blocks = s.blocks;
  auto even0 = hn::Zero(df), odd0 = hn::Zero(df), even1 = hn::Zero(df), odd1 = hn::Zero(df);
  int64_t b = 0;
  if (e1 != nullptr) {
    constexpr int64_t kStep = kPairStepBlocks<DF, kStride>;
    for (; b + kStep <= blocks && stream.lines > 0; b += kStep) {
      StreamLine(stream);
      PairStep<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
    }
    if (s.prefetch) {
      for (; b + kPrefetchAhead + kStep <= blocks; b += kStep) {
        for (int64_t i = 0; i < kStep; ++i) {
          Prefetch<kDec, kRows>(s, e0, b + kPrefetchAhead + i);
          Prefetch<kDec, kRows>(s, *e1, b + kPrefetchAhead + i);
        }
        PairStep<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
      }
    }
    for (; b + kStep <= blocks; b += kStep)
      PairStep<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
    if (b < blocks) AccumulateBlock<kDec, kRule, kRows, DF, kStride>(s, *e1, b, x, even1);
    *y1 = hn::GetLane(hn::SumOfLanes(df, hn::Add(even1, odd1)));
  } else {
    for (; b + 2 <= blocks; b += 2) {
      AccumulateBlock<kDec, kRule, kRows, DF, kStride>(s, e0, b, x, even0);
      AccumulateBlock<kDec, kRule, kRows, DF, kStride>(s, e0, b + 1, x, odd0);
    }
  }
  if (b < blocks) AccumulateBlock<kDec, kRule, kRows, DF, kStride>(s, e0, b, x, even0);
  *y0 = hn::GetLane(hn::SumOfLanes(df, hn::Add(even0, odd0)));
}

// ---- One token in BF16 (docs/ultrasketch.md, "BF16 products"): the default layers (4-bit codes,
// two hash rows, the absmaxmin rule, blocks of 32) on CPUs with AVX512_BF16 and AVX512_VBMI.
// Per block and two output rows, the 64 code bytes (2 rows x 2 hash rows x 16) are split into
// nibbles; VPSHUFB maps each hash row's codes to their rank among the 32 values of both hash rows
// sorted by magnitude, ties to hash row 0, so the smaller rank is the rule's choice (one VPMINUB
// for 64 weights); VPERMW looks the rank's value up in BF16, and VDPBF16PS multiplies 32 weights
// with x rounded to BF16, permuted once per product to the order the bytes land in. Against the
// fp32 loop (per 16 weights two shifts, two VPERMPS, VRANGEPS, a mask and an FMA) this is about
// half the vector instructions (dev/sketch-kernel-notes.md).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
constexpr bool kHasBf16Products =
    Is512<DF>() && kDec == Decoder::Lut4&& kRule == SketchRule::AbsMaxMin&& kRows == 2 &&
    kStride == 32;

// The element of a block whose code the BF16 products put at byte position p (0..63): byte p % 16
// of the block's 16 code bytes, its low nibble in even 128-bit lanes, its high one in odd lanes;
// nibble n of a group's 64-bit word holds the element that sketch_nibble maps to n.
constexpr int Bf16Element(int p) {
  const int byte = p % 16, n = 2 * (byte % 8) + (p / 16) % 2;
  return 16 * (byte / 8) + 2 * (n % 8) + n / 8;
}

// The rank and value tables of the BF16 products (Setup::bf16_ranks, bf16_values).
inline void BuildBf16Tables(const SketchMatrix& m, Setup& s) {
  struct Entry {
    float value;
    int row, code;
  };
  Entry all[32];
  for (int k = 0; k < 2; ++k)
    for (int c = 0; c < 16; ++c)
      all[16 * k + c] = {float(c < 8 ? c : c - 16) * m.hash_rows[k].scale, k, c};
  std::stable_sort(all, all + 32, [](const Entry& a, const Entry& b) {
    return std::fabs(a.value) != std::fabs(b.value) ? std::fabs(a.value) < std::fabs(b.value)
                                                    : a.row < b.row;
  });
  for (int rank = 0; rank < 32; ++rank) {
    const Entry& e = all[rank];
    s.bf16_ranks[32 * e.row + e.code] = s.bf16_ranks[32 * e.row + 16 + e.code] = uint8_t(rank);
    s.bf16_values[rank] = f32_to_bf16(e.value);
  }
}

// One token's blocked x (blocks, 32) as BF16 in product order: per block the words of the even
// byte positions, then those of the odd ones. out: (blocks, 32).
inline void Bf16Activations(const float* x, int64_t blocks, uint16_t* out) {
  for (int64_t b = 0; b < blocks; ++b)
    for (int w = 0; w < 16; ++w) {
      out[b * 32 + w] = f32_to_bf16(x[b * 32 + Bf16Element(2 * w)]);
      out[b * 32 + 16 + w] = f32_to_bf16(x[b * 32 + Bf16Element(2 * w + 1)]);
    }
}

#if SUBBIT_SKETCH_AVX512
// The target's own features too: clang replaces the enclosing target pragma's with an attribute's.
#define SUBBIT_BF16_ATTR __attribute__((target(HWY_TARGET_STR ",avx512bf16,avx512vbmi")))

// Ranks of one output row's block b, 128-bit lanes [hash row 0's low nibbles, its high
// nibbles, hash row 1's low, high].
SUBBIT_BF16_ATTR HWY_INLINE __m512i Bf16BlockRanks(const Setup& s, const RowEntries& e, int64_t b,
                                                   __m512i ranks) {
  BlockRefs<2> r;
  Refs<Decoder::Lut4, 2>(s, e, b, r);
  __m512i v =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.bucket[0])));
  v = _mm512_mask_broadcast_i32x4(v, 0xFF00,
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.bucket[1])));
  v = _mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4);
  return _mm512_shuffle_epi8(ranks, _mm512_and_si512(v, _mm512_set1_epi8(15)));
}

// Block b of two output rows: lanes 0-7 of acc_even / acc_odd for e0's row, 8-15 for e1's.
SUBBIT_BF16_ATTR HWY_INLINE void Bf16Block(const Setup& s, const RowEntries& e0,
                                           const RowEntries& e1, int64_t b, const uint16_t* xw,
                                           __m512i ranks, __m512i values, __m512& acc_even,
                                           __m512& acc_odd) {
  const __m512i r0 = Bf16BlockRanks(s, e0, b, ranks), r1 = Bf16BlockRanks(s, e1, b, ranks);
  // Hash row 0's ranks of both output rows against hash row 1's: the smaller rank is the rule's.
  const __m512i chosen =
      _mm512_min_epu8(_mm512_shuffle_i64x2(r0, r1, 0x44), _mm512_shuffle_i64x2(r0, r1, 0xEE));
  const __m512i w_even = _mm512_permutexvar_epi16(chosen, values);  // VPERMW reads 5 index bits
  const __m512i w_odd = _mm512_permutexvar_epi16(_mm512_srli_epi16(chosen, 8), values);
  const __m512i x_even =
      _mm512_broadcast_i64x4(_mm256_load_si256(reinterpret_cast<const __m256i*>(xw + b * 32)));
  const __m512i x_odd =
      _mm512_broadcast_i64x4(_mm256_load_si256(reinterpret_cast<const __m256i*>(xw + b * 32 + 16)));
  acc_even = _mm512_dpbf16_ps(acc_even, reinterpret_cast<__m512bh>(w_even),
                              reinterpret_cast<__m512bh>(x_even));
  acc_odd = _mm512_dpbf16_ps(acc_odd, reinterpret_cast<__m512bh>(w_odd),
                             reinterpret_cast<__m512bh>(x_odd));
}

// Blocks b and b + 1 of two output rows, into separate accumulators (the VDPBF16PS latency).
SUBBIT_BF16_ATTR HWY_INLINE void Bf16BlockPair(const Setup& s, const RowEntries& e0,
                                               const RowEntries& e1, int64_t b, const uint16_t* xw,
                                               __m512i ranks, __m512i values, __m512 (&acc)[4]) {
  Bf16Block(s, e0, e1, b, xw, ranks, values, acc[0], acc[1]);
  Bf16Block(s, e0, e1, b + 1, xw, ranks, values, acc[2], acc[3]);
}

// RowDots in BF16 (e0 == e1 for a single row); xw from Bf16Activations. The same table stream
// and prefetch as RowDots.
inline SUBBIT_BF16_ATTR HWY_NOINLINE void RowDotsBf16(const Setup& s, const RowEntries& e0,
                                                      const RowEntries& e1, const uint16_t* xw,
                                                      float* y0, float* y1,
                                                      TableStream<2>& stream) {
  const __m512i ranks = _mm512_load_si512(s.bf16_ranks), values = _mm512_load_si512(s.bf16_values);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  const int64_t blocks = s.blocks;
  int64_t b = 0;
  for (; b + 2 <= blocks && stream.lines > 0; b += 2) {
    StreamLine(stream);
    Bf16BlockPair(s, e0, e1, b, xw, ranks, values, acc);
  }
  if (s.prefetch) {
    for (; b + kPrefetchAhead + 2 <= blocks; b += 2) {
      for (int64_t i = 0; i < 2; ++i) {
        Prefetch<Decoder::Lut4, 2>(s, e0, b + kPrefetchAhead + i);
        Prefetch<Decoder::Lut4, 2>(s, e1, b + kPrefetchAhead + i);
      }
      Bf16BlockPair(s, e0, e1, b, xw, ranks, values, acc);
    }
  }
  for (; b + 2 <= blocks; b += 2) Bf16BlockPair(s, e0, e1, b, xw, ranks, values, acc);
  if (b < blocks) Bf16Block(s, e0, e1, b, xw, ranks, values, acc[0], acc[1]);
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
  *y0 = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0x00FF, sum));
  *y1 = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0xFF00, sum));
}

// The one-token product of rows [row_begin, row_end) in BF16; x blocked (blocks, 32), e the
// entry buffers of two rows.
inline void MatmulRowsBf16(const SketchMatrix& m, Setup& s, RowEntries (&e)[2], const float* x,
                           float* y, int64_t row_begin, int64_t row_end) {
  BuildBf16Tables(m, s);
  uint16_t* xw = thread_scratch<uint16_t>(ThreadScratchSlot::SketchBf16Activations,
                                          size_t(s.blocks * 32));  // (blocks, 32)
  Bf16Activations(x, s.blocks, xw);
  TableStreamer<2> streamer(m, s, row_begin);
  int64_t r = row_begin;
  for (; r + 2 <= row_end; r += 2) {
    TableStream<2> stream = streamer.Through(r + 1);
    Hash<Decoder::Lut4, 2, 32>(m, s, r, e[0]);
    Hash<Decoder::Lut4, 2, 32>(m, s, r + 1, e[1]);
    RowDotsBf16(s, e[0], e[1], xw, y + r, y + r + 1, stream);
  }
  if (r < row_end) {
    TableStream<2> none{{}, 0};
    float unused;
    Hash<Decoder::Lut4, 2, 32>(m, s, r, e[0]);
    RowDotsBf16(s, e[0], e[0], xw, y + r, &unused, none);
  }
}
#undef SUBBIT_BF16_ATTR
#endif  // SUBBIT_SKETCH_AVX512

// Two output rows (e1 == nullptr: one) times kT tokens: each block is decoded once and multiplied
// with every token; xs: kT blocked token rows; out (2, kT).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride, int kT>
HWY_NOINLINE void RowDotsTokens(const Setup& s, const RowEntries& e0, const RowEntries* e1,
                                const float* const* xs, float* out) {
  const DF df;
  const int64_t blocks = s.blocks, stride = Stride<kStride>(s);
  const float* x[kT];
  for (int t = 0; t < kT; ++t) x[t] = xs[t];
  hn::Vec<DF> acc0[kT], acc1[kT];
  for (int t = 0; t < kT; ++t) acc0[t] = acc1[t] = hn::Zero(df);
  if (e1 != nullptr) {
    for (int64_t b = 0; b < blocks; ++b) {
      BlockRefs<kRows> r0, r1;
      Refs<kDec, kRows>(s, e0, b, r0);
      Refs<kDec, kRows>(s, *e1, b, r1);
      for (int64_t v = 0; v < stride; v += hn::Lanes(df)) {
        const auto w0 = Decode<kDec, kRule, kRows>(df, s, r0, v);
        const auto w1 = Decode<kDec, kRule, kRows>(df, s, r1, v);
        for (int t = 0; t < kT; ++t) {
          const auto xv = hn::Load(df, x[t] + b * stride + v);
          acc0[t] = hn::MulAdd(w0, xv, acc0[t]);
          acc1[t] = hn::MulAdd(w1, xv, acc1[t]);
        }
      }
    }
    for (int t = 0; t < kT; ++t) out[kT + t] = hn::GetLane(hn::SumOfLanes(df, acc1[t]));
  } else {
    for (int64_t b = 0; b < blocks; ++b) {
      BlockRefs<kRows> r0;
      Refs<kDec, kRows>(s, e0, b, r0);
      for (int64_t v = 0; v < stride; v += hn::Lanes(df)) {
        const auto w0 = Decode<kDec, kRule, kRows>(df, s, r0, v);
        for (int t = 0; t < kT; ++t)
          acc0[t] = hn::MulAdd(w0, hn::Load(df, x[t] + b * stride + v), acc0[t]);
      }
    }
  }
  for (int t = 0; t < kT; ++t) out[t] = hn::GetLane(hn::SumOfLanes(df, acc0[t]));
}

// out (kR, kT) = decoded rows (kR, width) · token rows xs[0 .. kT) (each `width` floats), with
// the dense products' register tile. Not inlined: the tile gets the registers to itself.
template <class DF, int kR, int kT>
HWY_NOINLINE void DecodedRowsTile(const float* rows, int64_t width, const float* const* xs,
                                  float* out) {
  const DF df;
  hn::Vec<DF> acc[kR][kT];
  TileDots<kR, kT>(
      df, width,
      [&](int r, int64_t c) HWY_ATTR
      __attribute__((always_inline)) { return hn::Load(df, rows + r * width + c); },
      xs, acc);
  for (int i = 0; i < kR; ++i)
    for (int t = 0; t < kT; ++t) out[i * kT + t] = hn::GetLane(hn::SumOfLanes(df, acc[i][t]));
}

// Rows decoded at a time and tokens per tile of the many-token product: 4 x 4 accumulators fit
// AVX-512's 32 registers next to the loaded vectors; narrower targets have 16 registers.
template <class DF>
constexpr int kDecodedRows = hn::MaxLanes(DF()) >= 16 ? 4 : 2;
constexpr int kTileTokens = 4;
// Up to this many tokens, decoding is fused into the products; above it, rows are decoded once
// and multiplied with every token.
constexpr int64_t kFusedMaxTokens = 8;

// Rows [row_begin, row_end) of y; x is blocked, (tokens, blocks · stride), 64-byte aligned.
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
void MatmulRows(const SketchMatrix& m, const float* x, float* y, int64_t tokens, int64_t row_begin,
                int64_t row_end) {
  Setup s;
  BuildSetup<kDec, kRule, DF>(m, s);
  const int64_t width = s.blocks * s.stride;
  RowEntries e[2];
  sketch_detail::entry_buffers(2 * kRows * s.padded_blocks, 2, s.padded_blocks, e);
  if (tokens == 1) {
#if SUBBIT_SKETCH_AVX512
    if constexpr (kHasBf16Products<kDec, kRule, kRows, DF, kStride>)
      if (sketch_bf16_products()) return MatmulRowsBf16(m, s, e, x, y, row_begin, row_end);
#endif
    TableStreamer<kRows> streamer(m, s, row_begin);
    int64_t r = row_begin;
    for (; r + 2 <= row_end; r += 2) {
      TableStream<kRows> stream = streamer.Through(r + 1);
      Hash<kDec, kRows, kStride>(m, s, r, e[0]);
      Hash<kDec, kRows, kStride>(m, s, r + 1, e[1]);
      RowDots<kDec, kRule, kRows, DF, kStride>(s, e[0], &e[1], x, y + r, y + r + 1, stream);
    }
    if (r < row_end) {
      TableStream<kRows> none{{}, 0};
      Hash<kDec, kRows, kStride>(m, s, r, e[0]);
      RowDots<kDec, kRule, kRows, DF, kStride>(s, e[0], nullptr, x, y + r, nullptr, none);
    }
    return;
  }
  // Tiles past the last token read zeros; their products are dropped.
  float* zeros = thread_scratch<float>(ThreadScratchSlot::SketchZeros, size_t(width));  // (width)
  std::fill_n(zeros, width, 0.0f);
  if (tokens <= kFusedMaxTokens) {
    // A few tokens: decoding fused into the products, up to kT tokens at a time (2 rows x 8 tokens
    // are 16 accumulators, which fit AVX-512's 32 registers next to the decoder's; narrower
    // targets have 16).
    constexpr int kT = Is512<DF>() ? 8 : 4;
    float out[2 * kT];
    for (int64_t r = row_begin; r < row_end; r += 2) {
      const bool pair = r + 1 < row_end;
      Hash<kDec, kRows, kStride>(m, s, r, e[0]);
      if (pair) Hash<kDec, kRows, kStride>(m, s, r + 1, e[1]);
      for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
        const float* xs[kT];
        for (int t = 0; t < kT; ++t) xs[t] = t0 + t < tokens ? x + (t0 + t) * width : zeros;
        const int64_t left = tokens - t0;
        const int n = left <= 2 ? 2 : left <= 4 ? 4 : kT;  // tokens in this tile
        if (n == 2)
          RowDotsTokens<kDec, kRule, kRows, DF, kStride, 2>(s, e[0], pair ? &e[1] : nullptr, xs,
                                                            out);
        else if (n == 4)
          RowDotsTokens<kDec, kRule, kRows, DF, kStride, 4>(s, e[0], pair ? &e[1] : nullptr, xs,
                                                            out);
        else
          RowDotsTokens<kDec, kRule, kRows, DF, kStride, kT>(s, e[0], pair ? &e[1] : nullptr, xs,
                                                             out);
        for (int i = 0; i < (pair ? 2 : 1); ++i)
          for (int t = 0; t < n && t0 + t < tokens; ++t)
            y[(t0 + t) * m.n_out + r + i] = out[i * n + t];
      }
    }
    return;
  }
  // Many tokens: decode kR rows once into an L1/L2-sized buffer, then multiply them with every
  // token, kTileTokens at a time, so decoding costs once per row, not once per token.
  constexpr int kR = kDecodedRows<DF>;
  float* decoded = thread_scratch<float>(ThreadScratchSlot::SketchDecodedRows,
                                         size_t(kR * width));  // (kR, width)
  float out[kR * kTileTokens];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kR) {
    const int64_t nr = std::min<int64_t>(kR, row_end - r0);
    for (int64_t i = 0; i < nr; i += 2) {
      Hash<kDec, kRows, kStride>(m, s, r0 + i, e[0]);
      if (i + 1 < nr) Hash<kDec, kRows, kStride>(m, s, r0 + i + 1, e[1]);
      DecodeRows<kDec, kRule, kRows, DF, kStride>(s, e[0], i + 1 < nr ? &e[1] : nullptr,
                                                  decoded + i * width, decoded + (i + 1) * width);
    }
    for (int64_t t0 = 0; t0 < tokens; t0 += kTileTokens) {
      const float* xs[kTileTokens];
      for (int t = 0; t < kTileTokens; ++t) xs[t] = t0 + t < tokens ? x + (t0 + t) * width : zeros;
      if (nr == kR) {
        DecodedRowsTile<DF, kR, kTileTokens>(decoded, width, xs, out);
      } else {
        for (int64_t i = 0; i < nr; ++i)
          DecodedRowsTile<DF, 1, kTileTokens>(decoded + i * width, width, xs,
                                              out + i * kTileTokens);
      }
      for (int64_t i = 0; i < nr; ++i)
        for (int t = 0; t < kTileTokens && t0 + t < tokens; ++t)
          y[(t0 + t) * m.n_out + r0 + i] = out[i * kTileTokens + t];
    }
  }
}

template <Decoder kDec, SketchRule kRule, int kRows>
void MatmulRowsForStride(const SketchMatrix& m, const float* x, float* y, int64_t tokens,
                         int64_t row_begin, int64_t row_end) {
  using D16 = hn::CappedTag<float, 16>;
  // Block 16 has its own instantiation, and so does block 32 with 4-bit codes (the Nibble
  // layout); every other stride shares the generic one (each instantiation is another copy of
  // every kernel to compile, docs/building.md). Its vectors must divide every stride it serves: 8
  // and multiples of 16 for fp32 and int8 tables, multiples of 16 only for the Nibble layout
  // (sketch_bucket_stride).
  using DGeneric = std::conditional_t<Nibbles(kDec), D16, hn::CappedTag<float, 8>>;
  if (m.stride() == 16)
    return MatmulRows<kDec, kRule, kRows, D16, 16>(m, x, y, tokens, row_begin, row_end);
  if constexpr (Nibbles(kDec))
    if (m.stride() == 32)
      return MatmulRows<kDec, kRule, kRows, D16, 32>(m, x, y, tokens, row_begin, row_end);
  return MatmulRows<kDec, kRule, kRows, DGeneric, 0>(m, x, y, tokens, row_begin, row_end);
}

// The whole product with decoder kDec, multithreaded over output rows: what each layout's
// translation unit instantiates.
template <Decoder kDec>
void MatmulWithDecoder(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  // Waking the OpenMP team costs more than a small product: those run on the calling thread.
  const bool small = m.n_out * m.n_in * tokens < (int64_t{1} << 18);
  const int64_t grain =
      small ? m.n_out : std::max<int64_t>(8, std::min<int64_t>(128, m.n_out / (num_threads() * 4)));
  using enum SketchRule;
  parallel_for(m.n_out, grain, [&](int64_t begin, int64_t end) {
    // The pairs sketch_detail::has_simd_kernel lists; one hash row is the same under every rule.
    if (m.rows == 1) return MatmulRowsForStride<kDec, AbsMaxMin, 1>(m, x, y, tokens, begin, end);
    if (m.rule == AbsMinMax)
      return MatmulRowsForStride<kDec, AbsMinMax, 2>(m, x, y, tokens, begin, end);
    if (m.rule == Mean) return MatmulRowsForStride<kDec, Mean, 2>(m, x, y, tokens, begin, end);
    if (m.rows == 2) return MatmulRowsForStride<kDec, AbsMaxMin, 2>(m, x, y, tokens, begin, end);
    if (m.rows == 3) return MatmulRowsForStride<kDec, AbsMaxMin, 3>(m, x, y, tokens, begin, end);
    return MatmulRowsForStride<kDec, AbsMaxMin, 4>(m, x, y, tokens, begin, end);
  });
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_SKETCH_PRODUCTS_INL_H_ toggle
