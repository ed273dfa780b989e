#include "ops/sketch_matmul.h"

#include <algorithm>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sketch_matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "ops/dense_matmul.h"
#include "ops/parallel.h"

#ifndef SUBBIT_SKETCH_MATMUL_SHARED
#define SUBBIT_SKETCH_MATMUL_SHARED
namespace subbit::sketch_detail {

// `count` (<= 64) bits of the salient mask starting at bit `first`; bits past `total` read 0.
inline uint64_t mask_bits(const uint64_t* mask, int64_t total, int64_t first, int64_t count) {
  uint64_t bits = 0;
  const int64_t end = std::min(total, first + count);
  for (int64_t bit = first; bit < end;) {
    const int64_t take = std::min<int64_t>(64 - bit % 64, end - bit);
    const uint64_t word = mask[bit / 64] >> (bit % 64);
    bits |= (take == 64 ? word : word & ((uint64_t{1} << take) - 1)) << (bit - first);
    bit += take;
  }
  return bits;
}

// One output row's hashes, computed once and reused for every token of the row.
struct RowCodes {
  // (rows, padded_blocks): the address of the block's bucket with the sign in bit 0 (set: −1).
  // Float addresses are even, so the bit is free, and decoding a block costs one load per hash
  // row besides the bucket itself.
  std::vector<uint64_t> entries;
  int64_t padded_blocks;
  uint64_t entry(int k, int64_t b) const { return entries[k * padded_blocks + b]; }
};

}  // namespace subbit::sketch_detail
#endif

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using sketch_detail::RowCodes;
using DU64 = hn::ScalableTag<uint64_t>;

HWY_INLINE hn::Vec<DU64> Mix64(hn::Vec<DU64> z) {
  const DU64 d;
  z = hn::Mul(hn::Xor(z, hn::ShiftRight<30>(z)), hn::Set(d, 0xBF58476D1CE4E5B9ull));
  z = hn::Mul(hn::Xor(z, hn::ShiftRight<27>(z)), hn::Set(d, 0x94D049BB133111EBull));
  return hn::Xor(z, hn::ShiftRight<31>(z));
}

// 32x32 -> 64-bit product of the low halves of each lane (both operands < 2^32).
HWY_INLINE hn::Vec<DU64> MulLow32(hn::Vec<DU64> a, hn::Vec<DU64> b) {
#if HWY_TARGET == HWY_SCALAR
  return hn::Mul(a, b);  // one lane: no 32-bit halves to repartition into
#else
  const hn::Repartition<uint32_t, DU64> d32;
  return hn::MulEven(hn::BitCast(d32, a), hn::BitCast(d32, b));
#endif
}

// sketch_bucket() in every lane.
HWY_INLINE hn::Vec<DU64> Bucket(hn::Vec<DU64> h, hn::Vec<DU64> buckets) {
  const auto high = MulLow32(hn::ShiftRight<32>(h), buckets);
  const auto low = MulLow32(h, buckets);
  return hn::ShiftRight<32>(hn::Add(high, hn::ShiftRight<32>(low)));
}

// The codes of every block of output row `row`, lanes of blocks at a time. Lanes past the last
// block compute codes nobody reads.
template <bool kSalient>
HWY_INLINE void HashRow(const SketchMatrix& m, int64_t row, RowCodes& codes) {
  const DU64 d;
  const int64_t lanes = hn::Lanes(d);
  const int64_t blocks = m.blocks_per_row();
  const auto row_term = hn::Set(d, uint64_t(row) * kSketchRowMultiplier);
  const auto block_step = hn::Set(d, uint64_t(lanes) * kSketchBlockMultiplier);
  const auto stride = hn::Set(d, uint64_t(m.stride()));
  const auto one = hn::Set(d, 1);
  for (int k = 0; k < m.rows; ++k) {
    const SketchHashRow& hr = m.hash_rows[k];
    const auto table = hn::Set(d, uint64_t(reinterpret_cast<uintptr_t>(hr.table)));
    auto block_term = hn::Mul(hn::Iota(d, 0), hn::Set(d, kSketchBlockMultiplier));
    for (int64_t b = 0; b < blocks; b += lanes, block_term = hn::Add(block_term, block_step)) {
      auto seed = hn::Set(d, hr.seed);
      auto buckets = hn::Set(d, hr.buckets);
      auto base = hn::Zero(d);
      if constexpr (kSalient) {
        const uint64_t bits = sketch_detail::mask_bits(m.salient_mask, m.n_out * blocks, row * blocks + b,
                                                       std::min<int64_t>(lanes, blocks - b));
        const auto salient = hn::TestBit(hn::Set(d, bits), hn::Shl(hn::Set(d, 1), hn::Iota(d, 0)));
        seed = hn::IfThenElse(salient, hn::Set(d, hr.salient_seed), seed);
        buckets = hn::IfThenElse(salient, hn::Set(d, hr.salient_buckets), buckets);
        base = hn::IfThenElseZero(salient, hn::Set(d, hr.buckets * uint64_t(m.stride())));
      }
      const auto h = Mix64(hn::Xor(hn::Xor(seed, row_term), block_term));
      const auto offset = hn::Add(MulLow32(Bucket(h, buckets), stride), base);  // floats
      const auto address = hn::Add(table, hn::ShiftLeft<2>(offset));
      hn::StoreU(hn::Or(address, hn::And(h, one)), d, codes.entries.data() + k * codes.padded_blocks + b);
    }
  }
}

// Block b's weights at floats [v, v + lanes), from the rows' sign-applied bucket vectors.
template <SketchRule kRule, int kRows, class DF>
HWY_INLINE hn::Vec<DF> Decode(DF df, const float* const* bucket, const hn::Vec<DF>* sign, int64_t v) {
  auto best = hn::Xor(hn::LoadU(df, bucket[0] + v), sign[0]);
  HWY_UNROLL(kSketchMaxRows)
  for (int k = 1; k < kRows; ++k) {
    const auto e = hn::Xor(hn::LoadU(df, bucket[k] + v), sign[k]);
    if constexpr (kRule == SketchRule::Mean) best = hn::Add(best, e);
    else if constexpr (kRule == SketchRule::AbsMinMax) best = hn::IfThenElse(hn::Abs(e) > hn::Abs(best), e, best);
    else best = hn::IfThenElse(hn::Abs(e) < hn::Abs(best), e, best);
  }
  if constexpr (kRule == SketchRule::Mean && kRows == 3) return hn::Div(best, hn::Set(df, 3.0f));
  // x · (1/2^k) rounds exactly like x / 2^k.
  if constexpr (kRule == SketchRule::Mean && kRows > 1) return hn::Mul(best, hn::Set(df, 1.0f / kRows));
  return best;
}

// The bucket vectors of block b in each hash row, and their signs as float sign-bit masks.
template <int kRows, class DF>
HWY_INLINE void LoadBuckets(DF df, const RowCodes& codes, int64_t b, const float** bucket, hn::Vec<DF>* sign) {
  const hn::RebindToUnsigned<DF> du;
  HWY_UNROLL(kSketchMaxRows)
  for (int k = 0; k < kRows; ++k) {
    const uint64_t entry = codes.entry(k, b);
    bucket[k] = reinterpret_cast<const float*>(uintptr_t(entry & ~uint64_t{1}));
    sign[k] = hn::BitCast(df, hn::Set(du, uint32_t(entry) << 31));
  }
}

// Floats per bucket: kStride when the caller fixed it at compile time (8 or 16, so the loops
// over a bucket's vectors unroll away), else the layer's.
template <int64_t kStride>
HWY_INLINE int64_t BucketStride(const SketchMatrix& m) {
  if constexpr (kStride != 0) return kStride;
  return m.stride();
}

// acc += decode(block b) · x(block b).
template <SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void AccumulateBlock(const SketchMatrix& m, const RowCodes& codes, int64_t b, const float* x,
                                hn::Vec<DF>& acc) {
  const DF df;
  const int64_t stride = BucketStride<kStride>(m);
  const float* bucket[kRows];
  hn::Vec<DF> sign[kRows];
  LoadBuckets<kRows>(df, codes, b, bucket, sign);
  for (int64_t v = 0; v < stride; v += hn::Lanes(df))
    acc = hn::MulAdd(Decode<kRule, kRows>(df, bucket, sign, v), hn::LoadU(df, x + b * stride + v), acc);
}

// One output row, one token: Σ_blocks decode(block) · x(block), decode fused into the dot
// product; x is blocked (block b at x + b · stride, zero past the block's weights).
// prefetch: the tables are too large for L2, so bucket loads are slow random accesses; asking
// for them a few block pairs early overlaps more misses than the reorder window alone would.
template <SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE float RowDot(const SketchMatrix& m, const RowCodes& codes, const float* x, bool prefetch) {
  const DF df;
  const int64_t blocks = m.blocks_per_row();
  constexpr int64_t kPrefetchAhead = 16;
  // Even and odd blocks accumulate separately: with one chain the FMA latency, not the
  // table loads, would bound the product.
  auto even = hn::Zero(df), odd = hn::Zero(df);
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    if (prefetch && b + kPrefetchAhead + 2 <= blocks) {
      HWY_UNROLL(kSketchMaxRows)
      for (int k = 0; k < kRows; ++k) {
        // The sign bit does not move the address off the bucket's cache line.
        hwy::Prefetch(reinterpret_cast<const float*>(uintptr_t(codes.entry(k, b + kPrefetchAhead))));
        hwy::Prefetch(reinterpret_cast<const float*>(uintptr_t(codes.entry(k, b + kPrefetchAhead + 1))));
      }
    }
    AccumulateBlock<kRule, kRows, DF, kStride>(m, codes, b, x, even);
    AccumulateBlock<kRule, kRows, DF, kStride>(m, codes, b + 1, x, odd);
  }
  if (b < blocks) AccumulateBlock<kRule, kRows, DF, kStride>(m, codes, b, x, even);
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(even, odd)));
}

// One row of W in the blocked layout (blocks · stride floats).
template <SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void DecodeRow(const SketchMatrix& m, const RowCodes& codes, float* out) {
  const DF df;
  const int64_t stride = BucketStride<kStride>(m);
  for (int64_t b = 0; b < m.blocks_per_row(); ++b) {
    const float* bucket[kRows];
    hn::Vec<DF> sign[kRows];
    LoadBuckets<kRows>(df, codes, b, bucket, sign);
    for (int64_t v = 0; v < stride; v += hn::Lanes(df))
      hn::StoreU(Decode<kRule, kRows>(df, bucket, sign, v), df, out + b * stride + v);
  }
}

// x is blocked, (tokens, blocks · stride).
template <SketchRule kRule, int kRows, class DF, int64_t kStride>
void MatmulRows(const SketchMatrix& m, const float* x, float* y, int64_t tokens, int64_t row_begin,
                int64_t row_end) {
  const int64_t lanes = hn::Lanes(DU64());
  const int64_t width = m.blocks_per_row() * m.stride();
  RowCodes codes;
  codes.padded_blocks = (m.blocks_per_row() + lanes - 1) / lanes * lanes;
  codes.entries.resize(kRows * codes.padded_blocks);
  auto hash_row = [&](int64_t r) {
    if (m.salient_mask != nullptr) HashRow<true>(m, r, codes);
    else HashRow<false>(m, r, codes);
  };
  if (tokens == 1) {
    int64_t table_bytes = 0;
    for (int k = 0; k < kRows; ++k)
      table_bytes += int64_t(m.hash_rows[k].buckets + m.hash_rows[k].salient_buckets) * m.stride() * 4;
    const bool prefetch = table_bytes > (int64_t{1} << 20);
    for (int64_t r = row_begin; r < row_end; ++r) {
      hash_row(r);
      y[r] = RowDot<kRule, kRows, DF, kStride>(m, codes, x, prefetch);
    }
    return;
  }
  // Several tokens: decode a band of rows once into an L2-sized buffer and run the register-tiled
  // dense kernel on it, so decoding costs once per row and token block, not once per token.
  // Token blocks keep a slice of x in cache while the bands stream past.
  constexpr int64_t kTokenBlock = 64;
  const int64_t band_rows = std::clamp<int64_t>((int64_t{128} << 10) / (width * int64_t(sizeof(float))), 1, 16);
  std::vector<float> band(band_rows * width);            // (band_rows, width)
  std::vector<float> band_out(kTokenBlock * band_rows);  // (token block, band_rows)
  for (int64_t t0 = 0; t0 < tokens; t0 += kTokenBlock) {
    const int64_t nt = std::min(kTokenBlock, tokens - t0);
    for (int64_t r0 = row_begin; r0 < row_end; r0 += band_rows) {
      const int64_t nr = std::min(band_rows, row_end - r0);
      for (int64_t i = 0; i < nr; ++i) {
        hash_row(r0 + i);
        DecodeRow<kRule, kRows, DF, kStride>(m, codes, band.data() + i * width);
      }
      dense_matmul(DenseMatrix{DType::F32, band.data(), nr, width}, x + t0 * width, band_out.data(), nt);
      for (int64_t t = 0; t < nt; ++t)
        std::copy_n(band_out.data() + t * nr, nr, y + (t0 + t) * m.n_out + r0);
    }
  }
}

template <SketchRule kRule, int kRows>
void MatmulRowsForStride(const SketchMatrix& m, const float* x, float* y, int64_t tokens,
                         int64_t row_begin, int64_t row_end) {
  using D8 = hn::CappedTag<float, 8>;
  using D16 = hn::CappedTag<float, 16>;
  switch (m.stride()) {
    case 8: return MatmulRows<kRule, kRows, D8, 8>(m, x, y, tokens, row_begin, row_end);
    case 16: return MatmulRows<kRule, kRows, D16, 16>(m, x, y, tokens, row_begin, row_end);
    default: return MatmulRows<kRule, kRows, D16, 0>(m, x, y, tokens, row_begin, row_end);
  }
}

template <SketchRule kRule>
void MatmulRowsForRule(const SketchMatrix& m, const float* x, float* y, int64_t tokens,
                       int64_t row_begin, int64_t row_end) {
  switch (m.rows) {
    case 1: return MatmulRowsForStride<kRule, 1>(m, x, y, tokens, row_begin, row_end);
    case 2: return MatmulRowsForStride<kRule, 2>(m, x, y, tokens, row_begin, row_end);
    case 3: return MatmulRowsForStride<kRule, 3>(m, x, y, tokens, row_begin, row_end);
    default: return MatmulRowsForStride<kRule, 4>(m, x, y, tokens, row_begin, row_end);
  }
}

void SketchMatmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  // Waking the OpenMP team costs more than a small product: those run on the calling thread.
  const bool small = m.n_out * m.n_in * tokens < (int64_t{1} << 18);
  const int64_t grain =
      small ? m.n_out : std::max<int64_t>(8, std::min<int64_t>(128, m.n_out / (num_threads() * 4)));
  parallel_for(m.n_out, grain, [&](int64_t begin, int64_t end) {
    switch (m.rule) {
      case SketchRule::AbsMinMax:
        return MatmulRowsForRule<SketchRule::AbsMinMax>(m, x, y, tokens, begin, end);
      case SketchRule::AbsMaxMin:
        return MatmulRowsForRule<SketchRule::AbsMaxMin>(m, x, y, tokens, begin, end);
      case SketchRule::Mean:
        return MatmulRowsForRule<SketchRule::Mean>(m, x, y, tokens, begin, end);
    }
  });
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>

#include "common/error.h"

namespace subbit {

HWY_EXPORT(SketchMatmul);

void sketch_matmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  if (m.rows < 1 || m.rows > kSketchMaxRows || m.block < 1 || m.block > kSketchMaxBlock)
    fail("sketch_matmul: {} hash rows, block {} (supported: 1..{} rows, block 1..{})", m.rows, m.block,
         kSketchMaxRows, kSketchMaxBlock);
  if (tokens == 0) return;
  const int64_t blocks = m.blocks_per_row(), stride = m.stride();
  // The kernel reads whole buckets, so x must be laid out with the same zero-padded stride per
  // block; the common case (block fills the stride and divides n_in) uses x in place.
  if (stride == m.block && blocks * m.block == m.n_in) {
    HWY_DYNAMIC_DISPATCH(SketchMatmul)(m, x, y, tokens);
    return;
  }
  std::vector<float> blocked(tokens * blocks * stride, 0.0f);  // (tokens, blocks, stride)
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t width = std::min(m.block, m.n_in - b * m.block);
      std::copy_n(x + t * m.n_in + b * m.block, width, blocked.data() + (t * blocks + b) * stride);
    }
  HWY_DYNAMIC_DISPATCH(SketchMatmul)(m, blocked.data(), y, tokens);
}

namespace {

template <SketchRule kRule>
float combine(const float* e, int rows) {
  float best = e[0];
  for (int k = 1; k < rows; ++k) {
    if constexpr (kRule == SketchRule::Mean) best += e[k];
    else if constexpr (kRule == SketchRule::AbsMinMax) best = std::fabs(e[k]) > std::fabs(best) ? e[k] : best;
    else best = std::fabs(e[k]) < std::fabs(best) ? e[k] : best;
  }
  if constexpr (kRule == SketchRule::Mean) return best / float(rows);
  return best;
}

template <SketchRule kRule>
void decode_row(const SketchMatrix& m, int64_t row, float* out) {
  const int64_t stride = m.stride();
  for (int64_t b = 0; b < m.blocks_per_row(); ++b) {
    const bool salient = m.salient(row, b);
    const float* bucket[kSketchMaxRows];
    bool negative[kSketchMaxRows];
    for (int k = 0; k < m.rows; ++k) {
      const SketchHashRow& hr = m.hash_rows[k];
      const uint64_t h = sketch_block_hash(salient ? hr.salient_seed : hr.seed, row, b);
      const uint64_t index = salient ? hr.buckets + sketch_bucket(h, hr.salient_buckets)
                                     : sketch_bucket(h, hr.buckets);
      bucket[k] = hr.table + index * stride;
      negative[k] = sketch_negative(h);
    }
    const int64_t width = std::min(m.block, m.n_in - b * m.block);
    for (int64_t j = 0; j < width; ++j) {
      float e[kSketchMaxRows] = {};
      for (int k = 0; k < m.rows; ++k) e[k] = negative[k] ? -bucket[k][j] : bucket[k][j];
      out[b * m.block + j] = combine<kRule>(e, m.rows);
    }
  }
}

}  // namespace

void sketch_decode_row(const SketchMatrix& m, int64_t row, float* out) {
  switch (m.rule) {
    case SketchRule::AbsMinMax: return decode_row<SketchRule::AbsMinMax>(m, row, out);
    case SketchRule::AbsMaxMin: return decode_row<SketchRule::AbsMaxMin>(m, row, out);
    case SketchRule::Mean: return decode_row<SketchRule::Mean>(m, row, out);
  }
}

void sketch_matmul_reference(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  std::vector<float> row(m.n_in);
  for (int64_t o = 0; o < m.n_out; ++o) {
    sketch_decode_row(m, o, row.data());
    for (int64_t t = 0; t < tokens; ++t) {
      double sum = 0;
      for (int64_t i = 0; i < m.n_in; ++i) sum += double(row[i]) * x[t * m.n_in + i];
      y[t * m.n_out + o] = float(sum);
    }
  }
}

}  // namespace subbit
#endif
