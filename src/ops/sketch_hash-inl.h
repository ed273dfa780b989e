// Hashing: an output row's blocks into its entries (bucket offsets and operands), SIMD over
// blocks.
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

// Computes the entries of output row `row`, lanes of blocks at a time (Group), all of them
// (All). Lanes past the last block compute entries nobody reads (valid buckets of blocks that do
// not exist).
template <Decoder kDec, int kRows, int64_t kStride, bool kSalient>
class RowHasher {
 public:
  RowHasher(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out)
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
    if constexpr (kSalient) {
      const uint64_t bits =
          sketch_detail::mask_bits(m_.salient_mask, m_.n_out * s_.blocks, row_ * s_.blocks + b,
                                   std::min<int64_t>(lanes, s_.blocks - b));
      salient = hn::TestBit(hn::Set(d, bits), hn::Shl(hn::Set(d, 1), hn::Iota(d, 0)));
    }
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

template <Decoder kDec, int kRows, int64_t kStride>
HWY_INLINE void Hash(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out) {
  if (m.salient_mask != nullptr)
    RowHasher<kDec, kRows, kStride, true>(m, s, row, out).All();
  else
    RowHasher<kDec, kRows, kStride, false>(m, s, row, out).All();
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_SKETCH_HASH_INL_H_ toggle
