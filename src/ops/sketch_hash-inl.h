// Hashing: an output row's blocks into its entries (bucket offsets and operands), SIMD over
// blocks: 64-bit lanes for hash version 1, 32-bit lanes (twice the blocks per instruction) for
// version 2 (ops/sketch_matmul.h, "Blocks and hashing").
//
// Per-target code (see ops/sketch_kernels.h for how the sketch product is put together): include
// it from a file that Highway's foreach_target.h compiles once per target, after hwy/highway.h.
#if defined(SUBBIT_OPS_SKETCH_HASH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBBIT_OPS_SKETCH_HASH_INL_H_
#undef SUBBIT_OPS_SKETCH_HASH_INL_H_
#else
#define SUBBIT_OPS_SKETCH_HASH_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cstdint>

#include "ops/sketch_setup-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE hn::Vec<DU64> Mix64Tail(hn::Vec<DU64> z) {
  const DU64 d;
  z = hn::Mul(z, hn::Set(d, 0xBF58476D1CE4E5B9ull));
  z = hn::Mul(hn::Xor(z, hn::ShiftRight<27>(z)), hn::Set(d, 0x94D049BB133111EBull));
  return hn::Xor(z, hn::ShiftRight<31>(z));
}

// Product of the low 32 bits of each lane (a 32x32 -> 64-bit multiply).
HWY_INLINE hn::Vec<DU64> MulLow32(hn::Vec<DU64> a, hn::Vec<DU64> b) {
#if HWY_TARGET == HWY_SCALAR
  const DU64 d;
  const auto low = hn::Set(d, 0xFFFFFFFFull);
  return hn::Mul(hn::And(a, low),
                 hn::And(b, low));  // one lane: no 32-bit halves to repartition into
#else
  const hn::Repartition<uint32_t, DU64> d32;
  return hn::MulEven(hn::BitCast(d32, a), hn::BitCast(d32, b));
#endif
}

// Bytes per bucket, a power of two when the stride is fixed at compile time.
template <Decoder kDec>
constexpr int64_t BucketBytes(int64_t stride) {
  return kDec == Decoder::F32 ? stride * 4 : stride;
}
template <Decoder kDec, int64_t kStride>
constexpr int kBucketShift = std::countr_zero(uint64_t(BucketBytes<kDec>(kStride)));
constexpr bool Nibbles(Decoder d) {
  return d == Decoder::Lut4 || d == Decoder::Lut4S || d == Decoder::Scale4;
}

// Which lanes of the group of blocks from b of output row `row` hold salient blocks, lane i holding
// block b + lane_blocks[i] (< 64, and < the lane width in bits).
template <class D>
HWY_INLINE hn::Mask<D> SalientLanes(D d, const SketchMatrix& m, const Setup& s, int64_t row,
                                    int64_t b, hn::Vec<D> lane_blocks) {
  using T = hn::TFromD<D>;
  const uint64_t bits =
      sketch_detail::mask_bits(m.salient_mask, m.n_out * s.blocks, row * s.blocks + b,
                               std::min<int64_t>(hn::Lanes(d), s.blocks - b));
  return hn::TestBit(hn::Set(d, T(bits)), hn::Shl(hn::Set(d, T{1}), lane_blocks));
}

// What hashing one output row in one hash row needs (scalars: vectors cannot be struct members
// on every target; the loops hoist their broadcasts).
// `buckets` are the row's band's (SketchBand::count) and `first` its first bucket, in the high
// half as the bucket index is there.
struct HashConsts {
  uint64_t seed, buckets, operand, first;                                  // main set
  uint64_t salient_seed, salient_buckets, salient_operand, salient_first;  // salient set
};

HWY_INLINE HashConsts MakeHashConsts(const SketchMatrix& m, const Setup& s, int k, int64_t row) {
  const SketchHashRow& hr = m.hash_rows[k];
  const uint64_t row_term = uint64_t(row) * kSketchRowMultiplier;
  const SketchBand band = sketch_band(hr.buckets, m.n_out, m.band_rows, row);
  const SketchBand salient_band = sketch_band(hr.salient_buckets, m.n_out, m.band_rows, row);
  return HashConsts{sketch_detail::xorshift30(hr.seed ^ row_term),
                    band.count,
                    s.operand[k][0],
                    band.first << 32,
                    sketch_detail::xorshift30(hr.salient_seed ^ row_term),
                    salient_band.count,
                    s.operand[k][1],
                    (hr.buckets + salient_band.first)
                        << 32};  // the salient buckets follow the main ones
}

// One hash row's entries of blocks [b, b + lanes): the byte offsets of their buckets and their
// operands (each < 2^32 in its lane). `salient` (kSalient only) marks the salient blocks.
template <Decoder kDec, int64_t kStride, bool kSalient>
HWY_INLINE void HashBlocks(const Setup& s, const HashConsts& c, const hn::Vec<DU64> block_terms,
                           const hn::Mask<DU64> salient, hn::Vec<DU64>& offset,
                           hn::Vec<DU64>& operand) {
  const DU64 d;
  auto seed = hn::Set(d, c.seed), buckets = hn::Set(d, c.buckets);
  operand = hn::Set(d, c.operand);
  if constexpr (kSalient) {
    seed = hn::IfThenElse(salient, hn::Set(d, c.salient_seed), seed);
    buckets = hn::IfThenElse(salient, hn::Set(d, c.salient_buckets), buckets);
    operand = hn::IfThenElse(salient, hn::Set(d, c.salient_operand), operand);
  }
  const auto h = Mix64Tail(hn::Xor(seed, block_terms));
  // sketch_bucket() in the band plus its first bucket (and the salient base) in the high 32 bits,
  // then its byte offset.
  auto bucket =
      hn::Add(MulLow32(hn::ShiftRight<32>(h), buckets), hn::ShiftRight<32>(MulLow32(h, buckets)));
  if constexpr (kSalient)
    bucket =
        hn::Add(bucket, hn::IfThenElse(salient, hn::Set(d, c.salient_first), hn::Set(d, c.first)));
  else
    bucket = hn::Add(bucket, hn::Set(d, c.first));
  if constexpr (kStride != 0 && Nibbles(kDec)) {
    // bucket · kStride | (negative ? kStride / 2 : 0): the negated codes follow the codes. The
    // bits below kStride come from h shifted so that its bit 0 lands on kStride / 2.
    const auto high_bits = hn::Set(d, ~uint64_t(kStride - 1));
    offset = hn::OrAnd(hn::AndNot(high_bits, hn::ShiftLeft<kBucketShift<kDec, kStride> - 1>(h)),
                       hn::ShiftRight<32 - kBucketShift<kDec, kStride>>(bucket), high_bits);
  } else if constexpr (kStride != 0) {
    offset = hn::ShiftRight<32 - kBucketShift<kDec, kStride>>(
        hn::And(bucket, hn::Set(d, 0xFFFFFFFF00000000ull)));
  } else {
    offset =
        MulLow32(hn::ShiftRight<32>(bucket), hn::Set(d, uint64_t(BucketBytes<kDec>(s.stride))));
    if constexpr (Nibbles(kDec))
      offset = hn::Add(offset, hn::IfThenElseZero(hn::TestBit(h, hn::Set(d, 1)),
                                                  hn::Set(d, uint64_t(s.stride / 2))));
  }
  if constexpr (!Nibbles(kDec)) {
    // ±: the float sign bit of the operand.
    operand = hn::OrAnd(operand, hn::ShiftLeft<31>(h), hn::Set(d, uint64_t{1} << 31));
  }
}

// Computes the entries of output row `row` under hash version 1, lanes of blocks at a time
// (Group), all of them (All). Lanes past the last block compute entries nobody reads (valid
// buckets of blocks that do not exist).
template <Decoder kDec, int kRows, int64_t kStride, bool kSalient>
class RowHasherV1 {
 public:
  RowHasherV1(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out)
      : m_(m), s_(s), row_(row), out_(out) {
    for (int k = 0; k < kRows; ++k) c_[k] = MakeHashConsts(m, s, k, row);
  }

  HWY_INLINE void All() {
    for (int64_t b = 0; b < s_.blocks; b += hn::Lanes(DU64())) Group(b);
  }

  // Blocks [b, b + lanes).
  HWY_INLINE void Group(int64_t b) {
    const DU64 d;
    const int64_t lanes = hn::Lanes(d);
    hn::Mask<DU64> salient = hn::FirstN(d, 0);
    if constexpr (kSalient) salient = SalientLanes(d, m_, s_, row_, b, hn::Iota(d, 0));
    const auto block_terms = hn::LoadU(d, s_.block_terms + b);
    hn::Vec<DU64> offset, operand;
    if constexpr (paired(kDec)) {
      HWY_UNROLL(kSketchMaxRows)
      for (int k = 0; k < kRows; ++k) {
        HashBlocks<kDec, kStride, kSalient>(s_, c_[k], block_terms, salient, offset, operand);
        // The operand in the low half (word kLow), the offset in the high half (word kHigh); an
        // intrinsic store, which may alias the words.
        hn::StoreU(hn::Or(operand, hn::ShiftLeft<32>(offset)), d,
                   reinterpret_cast<uint64_t*>(out_.words) + k * out_.padded_blocks + b);
      }
    } else if constexpr (kRows == 2) {
      hn::Vec<DU64> offset1;
      HashBlocks<kDec, kStride, kSalient>(s_, c_[0], block_terms, salient, offset, operand);
      HashBlocks<kDec, kStride, kSalient>(s_, c_[1], block_terms, salient, offset1, operand);
      // Both rows' offsets of a block in one uint64_t, read back as one.
      hn::StoreU(hn::Or(offset, hn::ShiftLeft<32>(offset1)), d,
                 reinterpret_cast<uint64_t*>(out_.words) + b);
    } else {
      HWY_ALIGN uint64_t lane_offsets[kRows][hn::MaxLanes(d)];
      for (int k = 0; k < kRows; ++k) {
        HashBlocks<kDec, kStride, kSalient>(s_, c_[k], block_terms, salient, offset, operand);
        hn::Store(offset, d, lane_offsets[k]);
      }
      for (int64_t i = 0; i < lanes; ++i)
        for (int k = 0; k < kRows; ++k)
          out_.words[(b + i) * kRows + k] = uint32_t(lane_offsets[k][i]);
    }
  }

 private:
  const SketchMatrix& m_;
  const Setup& s_;
  int64_t row_;
  RowEntries& out_;
  HashConsts c_[kRows];
};

// Any hash version one block at a time, from SketchMatrix::bucket_index: for targets whose lanes
// do not suit RowHasherV2 (one-lane scalar, big-endian, very wide vectors).
template <Decoder kDec, int kRows>
HWY_INLINE void HashBlockwise(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out) {
  for (int64_t b = 0; b < s.blocks; ++b)
    for (int k = 0; k < kRows; ++k) {
      bool negative = false;
      const uint64_t bucket = m.bucket_index(k, row, b, &negative);
      const uint32_t offset = uint32_t(bucket * uint64_t(BucketBytes<kDec>(s.stride))) +
                              (Nibbles(kDec) && negative ? uint32_t(s.stride / 2) : 0u);
      if constexpr (paired(kDec)) {
        uint32_t* entry = out.words + 2 * (k * out.padded_blocks + b);
        entry[kLow] =
            s.operand[k][m.salient(row, b) ? 1 : 0] | (!Nibbles(kDec) && negative ? 1u << 31 : 0u);
        entry[kHigh] = offset;
      } else if constexpr (kRows == 2) {  // one 64-bit word offset_0 | offset_1 << 32
        out.words[2 * b + (k == 0 ? kLow : kHigh)] = offset;
      } else {
        out.words[b * kRows + k] = offset;
      }
    }
}

// ---- Hash version 2: 32-bit lanes (none on the one-lane scalar target, which hashes blockwise).
#if HWY_TARGET != HWY_SCALAR

// murmur3's fmix32 (sketch_mix32) in every lane.
HWY_INLINE hn::Vec<DU32> Mix32(hn::Vec<DU32> z) {
  const DU32 d;
  z = hn::Mul(hn::Xor(z, hn::ShiftRight<16>(z)), hn::Set(d, 0x85EBCA6Bu));
  z = hn::Mul(hn::Xor(z, hn::ShiftRight<13>(z)), hn::Set(d, 0xC2B2AE35u));
  return hn::Xor(z, hn::ShiftRight<16>(z));
}

// floor(h · count / 2^32) in every lane, from the 32x32 -> 64-bit products of the even lanes and
// of the odd lanes moved down. kLaneCounts: count differs between lanes (else it is a broadcast,
// whose even lanes serve the odd products too).
template <bool kLaneCounts>
HWY_INLINE hn::Vec<DU32> ScaleHash(hn::Vec<DU32> h, hn::Vec<DU32> count) {
  const DU32 d;
  const DU64 d64;
  const auto odd_lanes = [&](hn::Vec<DU32> v) {
    return hn::BitCast(d, hn::ShiftRight<32>(hn::BitCast(d64, v)));
  };
  const auto even = hn::MulEven(h, count);
  const auto odd = hn::MulEven(odd_lanes(h), kLaneCounts ? odd_lanes(count) : count);
  return hn::OddEven(hn::BitCast(d, odd), odd_lanes(hn::BitCast(d, even)));
}

// What hashing one output row in one hash row needs under version 2 (as HashConsts).
struct HashConsts32 {
  uint32_t seed, buckets, operand, first;                                  // main set
  uint32_t salient_seed, salient_buckets, salient_operand, salient_first;  // salient set
};

HWY_INLINE HashConsts32 MakeHashConsts32(const SketchMatrix& m, const Setup& s, int k,
                                         int64_t row) {
  const SketchHashRow& hr = m.hash_rows[k];
  const SketchBand band = sketch_band(hr.buckets, m.n_out, m.band_rows, row);
  const SketchBand salient_band = sketch_band(hr.salient_buckets, m.n_out, m.band_rows, row);
  // Bucket numbers fit 32 bits: the kernels only take tables of < 4 GiB (sketch_matmul).
  return HashConsts32{sketch_fold_seed(hr.seed),
                      uint32_t(band.count),
                      s.operand[k][0],
                      uint32_t(band.first),
                      sketch_fold_seed(hr.salient_seed),
                      uint32_t(salient_band.count),
                      s.operand[k][1],
                      uint32_t(hr.buckets + salient_band.first)};
}

// HashBlocks for version 2: the entries of the blocks whose hash inputs (r · blocks_per_row + b)
// are `index`.
template <Decoder kDec, int64_t kStride, bool kSalient>
HWY_INLINE void HashBlocks32(const Setup& s, const HashConsts32& c, const hn::Vec<DU32> index,
                             const hn::Mask<DU32> salient, hn::Vec<DU32>& offset,
                             hn::Vec<DU32>& operand) {
  const DU32 d;
  auto seed = hn::Set(d, c.seed), buckets = hn::Set(d, c.buckets), first = hn::Set(d, c.first);
  operand = hn::Set(d, c.operand);
  if constexpr (kSalient) {
    seed = hn::IfThenElse(salient, hn::Set(d, c.salient_seed), seed);
    buckets = hn::IfThenElse(salient, hn::Set(d, c.salient_buckets), buckets);
    first = hn::IfThenElse(salient, hn::Set(d, c.salient_first), first);
    operand = hn::IfThenElse(salient, hn::Set(d, c.salient_operand), operand);
  }
  const auto h = Mix32(hn::Xor(seed, index));
  const auto bucket = hn::Add(ScaleHash<kSalient>(h, buckets), first);
  if constexpr (kStride != 0 && Nibbles(kDec)) {
    // bucket · kStride | (negative ? kStride / 2 : 0): bit 0 of h shifted onto kStride / 2.
    constexpr int kShift = kBucketShift<kDec, kStride>;
    offset = hn::OrAnd(hn::ShiftLeft<kShift>(bucket), hn::ShiftLeft<kShift - 1>(h),
                       hn::Set(d, uint32_t(kStride / 2)));
  } else if constexpr (kStride != 0) {
    offset = hn::ShiftLeft<kBucketShift<kDec, kStride>>(bucket);
  } else {
    offset = hn::Mul(bucket, hn::Set(d, uint32_t(BucketBytes<kDec>(s.stride))));
    if constexpr (Nibbles(kDec))
      offset = hn::Add(offset, hn::IfThenElseZero(hn::TestBit(h, hn::Set(d, 1u)),
                                                  hn::Set(d, uint32_t(s.stride / 2))));
  }
  if constexpr (!Nibbles(kDec))  // ±: the float sign bit of the operand
    operand = hn::OrAnd(operand, hn::ShiftLeft<31>(h), hn::Set(d, 1u << 31));
}

// Lane 2j of a version-2 group holds its block j, lane 2j + 1 its block lanes / 2 + j, so that the
// 64-bit halves of a vector hold the entries of consecutive blocks once paired (StorePairs).
HWY_INLINE hn::Vec<DU32> LaneBlocks() {
  const DU32 d;
  const auto lane = hn::Iota(d, 0);
  return hn::Add(hn::ShiftRight<1>(lane),
                 hn::IfThenElseZero(hn::TestBit(lane, hn::Set(d, 1u)),
                                    hn::Set(d, uint32_t(hn::Lanes(d) / 2))));
}

// Stores the 64-bit words low | high << 32 of a group's blocks, in block order.
HWY_INLINE void StorePairs(hn::Vec<DU32> low, hn::Vec<DU32> high, uint64_t* out) {
  const DU32 d;
  const DU64 d64;
  const auto even_blocks =
      hn::OddEven(hn::BitCast(d, hn::ShiftLeft<32>(hn::BitCast(d64, high))), low);
  const auto odd_blocks =
      hn::OddEven(high, hn::BitCast(d, hn::ShiftRight<32>(hn::BitCast(d64, low))));
  hn::StoreU(hn::BitCast(d64, even_blocks), d64, out);
  hn::StoreU(hn::BitCast(d64, odd_blocks), d64, out + hn::Lanes(d64));
}

// RowHasherV1 for hash version 2: 16 blocks per AVX-512 vector, in LaneBlocks' order.
template <Decoder kDec, int kRows, int64_t kStride, bool kSalient>
class RowHasherV2 {
 public:
  RowHasherV2(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out)
      : m_(m), s_(s), row_(row), out_(out), first_index_(uint32_t(uint64_t(row) * s.blocks)) {
    for (int k = 0; k < kRows; ++k) c_[k] = MakeHashConsts32(m, s, k, row);
  }

  HWY_INLINE void All() {
    const auto lane_blocks = LaneBlocks();
    for (int64_t b = 0; b < s_.blocks; b += hn::Lanes(DU32())) Group(b, lane_blocks);
  }

  // Blocks [b, b + lanes), lane_blocks = LaneBlocks().
  HWY_INLINE void Group(int64_t b, const hn::Vec<DU32> lane_blocks) {
    const DU32 d;
    const int64_t lanes = hn::Lanes(d);
    hn::Mask<DU32> salient = hn::FirstN(d, 0);
    if constexpr (kSalient) salient = SalientLanes(d, m_, s_, row_, b, lane_blocks);
    const auto index = hn::Add(hn::Set(d, first_index_ + uint32_t(b)), lane_blocks);
    uint64_t* words = reinterpret_cast<uint64_t*>(out_.words);
    hn::Vec<DU32> offset, operand;
    if constexpr (paired(kDec)) {  // little-endian, so kLow = 0: the operand is the low word
      HWY_UNROLL(kSketchMaxRows)
      for (int k = 0; k < kRows; ++k) {
        HashBlocks32<kDec, kStride, kSalient>(s_, c_[k], index, salient, offset, operand);
        StorePairs(operand, offset, words + k * out_.padded_blocks + b);
      }
    } else if constexpr (kRows == 2) {
      hn::Vec<DU32> offset1;
      HashBlocks32<kDec, kStride, kSalient>(s_, c_[0], index, salient, offset, operand);
      HashBlocks32<kDec, kStride, kSalient>(s_, c_[1], index, salient, offset1, operand);
      StorePairs(offset, offset1, words + b);
    } else {
      HWY_ALIGN uint32_t lane_offsets[kRows][hn::MaxLanes(d)];
      HWY_ALIGN uint32_t block_of_lane[hn::MaxLanes(d)];
      hn::Store(lane_blocks, d, block_of_lane);
      for (int k = 0; k < kRows; ++k) {
        HashBlocks32<kDec, kStride, kSalient>(s_, c_[k], index, salient, offset, operand);
        hn::Store(offset, d, lane_offsets[k]);
      }
      for (int64_t i = 0; i < lanes; ++i)
        for (int k = 0; k < kRows; ++k)
          out_.words[(b + block_of_lane[i]) * kRows + k] = lane_offsets[k][i];
    }
  }

 private:
  const SketchMatrix& m_;
  const Setup& s_;
  int64_t row_;
  RowEntries& out_;
  uint32_t first_index_;  // the hash input of the row's block 0
  HashConsts32 c_[kRows];
};

#endif  // HWY_TARGET != HWY_SCALAR

// Version 2 hashing of output row `row`. RowHasherV2's lane layout needs 32-bit lanes pairing up
// into 64-bit ones (little-endian) and at most 32 of them (a group's salient bits in one lane).
template <Decoder kDec, int kRows, int64_t kStride>
HWY_INLINE void HashV2(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(DU32()) == 2 * hn::MaxLanes(DU64()) && hn::MaxLanes(DU32()) <= 32 &&
                std::endian::native == std::endian::little) {
    if (m.salient_mask != nullptr)
      RowHasherV2<kDec, kRows, kStride, true>(m, s, row, out).All();
    else
      RowHasherV2<kDec, kRows, kStride, false>(m, s, row, out).All();
    return;
  }
#endif
  HashBlockwise<kDec, kRows>(m, s, row, out);
}

// Output row `row`'s entries under the layer's hash version.
template <Decoder kDec, int kRows, int64_t kStride>
HWY_INLINE void Hash(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out) {
  if (m.hash_version != 1) return HashV2<kDec, kRows, kStride>(m, s, row, out);
  if (m.salient_mask != nullptr)
    RowHasherV1<kDec, kRows, kStride, true>(m, s, row, out).All();
  else
    RowHasherV1<kDec, kRows, kStride, false>(m, s, row, out).All();
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_SKETCH_HASH_INL_H_ toggle
