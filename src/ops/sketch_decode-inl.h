// Decoding: a block's weights from its buckets in each hash row, combined by the read-back rule.
//
// Per-target code (see ops/sketch_kernels.h for how the sketch product is put together): include
// it from a file that Highway's foreach_target.h compiles once per target, after hwy/highway.h.
#if defined(SUBBIT_OPS_SKETCH_DECODE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBBIT_OPS_SKETCH_DECODE_INL_H_
#undef SUBBIT_OPS_SKETCH_DECODE_INL_H_
#else
#define SUBBIT_OPS_SKETCH_DECODE_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>
#include <cstring>

#include "ops/sketch_setup-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Elements per bucket: kStride when the caller fixed it at compile time (8 or 16, so the loops
// over a bucket's vectors unroll away), else the layer's.
template <int64_t kStride>
HWY_INLINE int64_t Stride(const Setup& s) {
  if constexpr (kStride != 0) return kStride;
  return s.stride;
}

// One block's buckets and operands in each hash row.
template <int kRows>
struct BlockRefs {
  const uint8_t* bucket[kRows];
  const uint32_t* operand[kRows];
};

template <Decoder kDec, int kRows>
HWY_INLINE void Refs(const Setup& s, const RowEntries& e, int64_t b, BlockRefs<kRows>& r) {
  if constexpr (paired(kDec)) {
    HWY_UNROLL(kSketchMaxRows)
    for (int k = 0; k < kRows; ++k) {
      const uint32_t* entry = e.words + 2 * (k * e.padded_blocks + b);
      r.operand[k] = entry + kLow;
      r.bucket[k] = s.base[k] + entry[kHigh];
    }
  } else if constexpr (kRows == 2) {
    uint64_t both;
    std::memcpy(&both, e.words + 2 * b, 8);
    r.bucket[0] = s.base[0] + uint32_t(both);
    r.bucket[1] = s.base[1] + uint32_t(both >> 32);
  } else {
    HWY_UNROLL(kSketchMaxRows)
    for (int k = 0; k < kRows; ++k) r.bucket[k] = s.base[k] + e.words[b * kRows + k];
  }
}

// Hash row k's signed values of elements [v, v + lanes) of its bucket.
template <Decoder kDec, class DF>
HWY_INLINE hn::Vec<DF> Value(DF df, const Setup& s, int k, const uint8_t* bucket,
                             const uint32_t* operand, int64_t v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  if constexpr (kDec == Decoder::F32) {
    return hn::Xor(hn::LoadU(df, reinterpret_cast<const float*>(bucket) + v),
                   hn::BitCast(df, hn::Set(du, *operand)));
  } else if constexpr (kDec == Decoder::Scale8) {
    const hn::Rebind<int8_t, DF> d8;
    const auto q = hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(bucket) + v));
    return hn::Mul(hn::ConvertTo(df, q), hn::BitCast(df, hn::Set(du, *operand)));
  } else {
    // Nibble layout: lane l of elements [v, v + lanes) is element j = v + l, in nibble
    // sketch_nibble(j) of its group's word: half l % 2 of the word, bits 4 · ((j % 16) / 2).
    uint64_t word;
    std::memcpy(&word, bucket + v / 16 * 8, 8);
    hn::Vec<decltype(du)> codes;  // the lane's code in its low 4 bits, garbage above
    if constexpr (hn::MaxLanes(df) == 1) {
      codes = hn::Set(du, uint32_t(word >> (4 * sketch_nibble(v))));
    } else {
      const hn::Repartition<uint64_t, decltype(du)> d64;
      const auto shift = hn::ShiftLeft<2>(
          hn::ShiftRight<1>(hn::Add(hn::Iota(du, 0), hn::Set(du, uint32_t(v % 16)))));
      codes = hn::Shr(hn::BitCast(du, hn::Set(d64, word)), shift);
    }
    if constexpr (kDec == Decoder::Scale4) {
      const auto q = hn::ShiftRight<28>(hn::ShiftLeft<28>(hn::BitCast(di, codes)));
      return hn::Mul(hn::ConvertTo(df, q), hn::BitCast(df, hn::Set(du, *operand)));
    } else {
#if SUBBIT_SKETCH_AVX512
      // VPERMPS reads only the low 4 bits of each index.
      const float* lut =
          kDec == Decoder::Lut4
              ? s.luts[k][0]
              : reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(s.luts) + *operand);
      return hn::Vec<DF>{_mm512_permutexvar_ps(codes.raw, hn::Load(df, lut).raw)};
#else
      return hn::Zero(df);  // never dispatched: Lut4 needs 16-lane AVX-512 vectors
#endif
    }
  }
}

// The read-back rule over the rows' estimates (ties to the lowest row).
template <Decoder kDec, SketchRule kRule, int kRows, class DF>
HWY_INLINE hn::Vec<DF> Combine(DF df, const hn::Vec<DF>* e) {
  auto best = e[0];
  if constexpr (UseRange<kDec, kRule, DF>()) {
#if SUBBIT_SKETCH_AVX512
    // imm 7: larger magnitude, 6: smaller magnitude; the result keeps the selected value's sign.
    constexpr int kImm = kRule == SketchRule::AbsMinMax ? 7 : 6;
    HWY_UNROLL(kSketchMaxRows)
    for (int k = 1; k < kRows; ++k) best = hn::Vec<DF>{_mm512_range_ps(e[k].raw, best.raw, kImm)};
    const hn::RebindToUnsigned<DF> du;
    return kRows == 1 ? best : hn::And(best, hn::BitCast(df, hn::Set(du, ~uint32_t{3})));
#endif
  } else {
    HWY_UNROLL(kSketchMaxRows)
    for (int k = 1; k < kRows; ++k) {
      if constexpr (kRule == SketchRule::Mean)
        best = hn::Add(best, e[k]);
      else if constexpr (kRule == SketchRule::AbsMinMax)
        best = hn::IfThenElse(hn::Abs(e[k]) > hn::Abs(best), e[k], best);
      else
        best = hn::IfThenElse(hn::Abs(e[k]) < hn::Abs(best), e[k], best);
    }
    if constexpr (kRule == SketchRule::Mean && kRows == 3) return hn::Div(best, hn::Set(df, 3.0f));
    // x · (1/2^k) rounds exactly like x / 2^k.
    if constexpr (kRule == SketchRule::Mean && kRows > 1)
      return hn::Mul(best, hn::Set(df, 1.0f / kRows));
  }
  return best;
}

// Weights [v, v + lanes) of a block.
template <Decoder kDec, SketchRule kRule, int kRows, class DF>
HWY_INLINE hn::Vec<DF> Decode(DF df, const Setup& s, const BlockRefs<kRows>& r, int64_t v) {
  hn::Vec<DF> e[kRows];
  HWY_UNROLL(kSketchMaxRows)
  for (int k = 0; k < kRows; ++k) e[k] = Value<kDec>(df, s, k, r.bucket[k], r.operand[k], v);
  return Combine<kDec, kRule, kRows>(df, e);
}

// Rows of W in the blocked layout (blocks · stride floats each, 64-byte aligned): e0 into out0
// and, unless e1 is nullptr, e1 into out1 (two rows keep more bucket loads in flight).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_NOINLINE void DecodeRows(const Setup& s, const RowEntries& e0, const RowEntries* e1,
                             float* HWY_RESTRICT out0, float* HWY_RESTRICT out1) {
  const DF df;
  const int64_t stride = Stride<kStride>(s), blocks = s.blocks;
  if (e1 != nullptr) {
    for (int64_t b = 0; b < blocks; ++b) {
      BlockRefs<kRows> r0, r1;
      Refs<kDec, kRows>(s, e0, b, r0);
      Refs<kDec, kRows>(s, *e1, b, r1);
      for (int64_t v = 0; v < stride; v += hn::Lanes(df)) {
        const auto w0 = Decode<kDec, kRule, kRows>(df, s, r0, v);
        const auto w1 = Decode<kDec, kRule, kRows>(df, s, r1, v);
        hn::Store(w0, df, out0 + b * stride + v);
        hn::Store(w1, df, out1 + b * stride + v);
      }
    }
    return;
  }
  for (int64_t b = 0; b < blocks; ++b) {
    BlockRefs<kRows> r0;
    Refs<kDec, kRows>(s, e0, b, r0);
    for (int64_t v = 0; v < stride; v += hn::Lanes(df))
      hn::Store(Decode<kDec, kRule, kRows>(df, s, r0, v), df, out0 + b * stride + v);
  }
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_SKETCH_DECODE_INL_H_ toggle
