// What the sketch kernels need of a layer (Setup, built once per call and thread) and the
// target facts the other parts test (Is512, UseRange).
//
// Per-target code (see ops/sketch_kernels.h for how the sketch product is put together): include
// it from a file that Highway's foreach_target.h compiles once per target, after hwy/highway.h.
#if defined(SUBBIT_OPS_SKETCH_SETUP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBBIT_OPS_SKETCH_SETUP_INL_H_
#undef SUBBIT_OPS_SKETCH_SETUP_INL_H_
#else
#define SUBBIT_OPS_SKETCH_SETUP_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cstdint>

#include "ops/sketch_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using sketch_detail::Decoder;
using sketch_detail::kHigh;
using sketch_detail::kLow;
using sketch_detail::paired;
using sketch_detail::RowEntries;
using DU64 = hn::ScalableTag<uint64_t>;
using DU32 = hn::ScalableTag<uint32_t>;

#undef SUBBIT_SKETCH_AVX512
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
#define SUBBIT_SKETCH_AVX512 1
#else
#define SUBBIT_SKETCH_AVX512 0
#endif

// Whether DF is a 16-lane AVX-512 vector (VPERMPS over 16 floats, VRANGEPS).
template <class DF>
constexpr bool Is512() {
  return SUBBIT_SKETCH_AVX512 && hn::MaxLanes(DF()) == 16;
}

// Selection by VRANGEPS. It breaks a tie between equal magnitudes of opposite sign by sign, not
// in favour of the first operand, so the decoders set the low 2 bits of each value to a per-row
// priority that makes every tie strict in favour of the lower hash row, and the selected value's
// low bits are cleared again. Decoded values have at least 6 trailing zero mantissa bits (codes:
// |q| < 2^7 times an fp16 step, at most 18 significant bits; fp16 values: 11), so magnitudes
// that differ are at least 64 ulps apart and the priority never reorders them. Zeros become
// denormals 0..3, which compare the same way (and are equal zeros under DAZ, where the result
// is a zero either way).
template <Decoder kDec, SketchRule kRule, class DF>
constexpr bool UseRange() {
  return Is512<DF>() && kRule != SketchRule::Mean &&
         (kDec == Decoder::F32 || kDec == Decoder::Lut4 || kDec == Decoder::Lut4S);
}
template <SketchRule kRule>
constexpr uint32_t TieBits(int k, int rows) {
  return kRule == SketchRule::AbsMinMax ? uint32_t(rows - 1 - k) : uint32_t(k);
}

// Tables (of a row band) much larger than L2 make the bucket loads slow random accesses: asking
// for them this many blocks ahead overlaps more of them than the reorder window does. On the
// development machine it halved the time at 28672 x 8192 (tables of 29 MB) and cost a few
// percent on tables of a few MB, hence the threshold.
constexpr int64_t kPrefetchAhead = 48;  // blocks
constexpr int64_t kPrefetchTableBytes = int64_t{8} << 20;

// Everything a kernel needs of a layer, built once per call.
struct Setup {
  alignas(64) float luts[kSketchMaxRows][2][16];  // Lut4/Lut4S: (hash row, set) -> q · step
  const uint8_t* base[kSketchMaxRows];            // each hash row's table
  uint32_t operand[kSketchMaxRows][2];            // entry operand of a + block, per set
  alignas(64) uint8_t bf16_ranks[64];             // BF16 products: code -> rank, per hash row twice
  alignas(64) uint16_t bf16_values[32];           // BF16 products: rank -> BF16 value
  const uint64_t* block_terms;  // (padded_blocks) xorshift30(b · B), thread scratch; hash v1 only
  int64_t blocks, padded_blocks, stride;
  int64_t table_bytes;  // all hash rows' tables
  bool prefetch;        // one band's share of the tables is large (kPrefetchTableBytes)
};

template <Decoder kDec, SketchRule kRule, class DF>
void BuildSetup(const SketchMatrix& m, Setup& s) {
  // Whole vectors of blocks for either hash: version 2 hashes 32-bit lanes, twice as many.
  const int64_t lanes = std::max(hn::Lanes(DU64()), hn::Lanes(DU32()));
  s.blocks = m.blocks_per_row();
  s.padded_blocks = (s.blocks + lanes - 1) / lanes * lanes;
  s.stride = m.stride();
  s.block_terms = nullptr;
  if (m.hash_version == 1) {
    uint64_t* block_terms =
        thread_scratch<uint64_t>(ThreadScratchSlot::SketchBlockTerms, size_t(s.padded_blocks));
    for (int64_t b = 0; b < s.padded_blocks; ++b)
      block_terms[b] = sketch_detail::xorshift30(uint64_t(b) * kSketchBlockMultiplier);
    s.block_terms = block_terms;
  }
  s.table_bytes = 0;
  for (int k = 0; k < m.rows; ++k) {
    const SketchHashRow& hr = m.hash_rows[k];
    s.base[k] = static_cast<const uint8_t*>(hr.table);
    s.table_bytes += int64_t(hr.buckets + hr.salient_buckets) * m.bucket_bytes();
    const uint32_t tie = UseRange<kDec, kRule, DF>() ? TieBits<kRule>(k, m.rows) : 0;
    for (int set = 0; set < 2; ++set) {
      const float step = set == 0 ? hr.scale : hr.salient_scale;
      for (int i = 0; i < 16; ++i)  // q = the nibble, signed
        s.luts[k][set][i] =
            std::bit_cast<float>(std::bit_cast<uint32_t>(float(i < 8 ? i : i - 16) * step) | tie);
      if constexpr (kDec == Decoder::F32) s.operand[k][set] = tie;
      if constexpr (kDec == Decoder::Scale8 || kDec == Decoder::Scale4)
        s.operand[k][set] = std::bit_cast<uint32_t>(step);
      if constexpr (kDec == Decoder::Lut4 || kDec == Decoder::Lut4S)
        s.operand[k][set] = uint32_t(reinterpret_cast<const uint8_t*>(s.luts[k][set]) -
                                     reinterpret_cast<const uint8_t*>(s.luts));
    }
  }
  // What one row's loads range over: its band's share of the tables.
  s.prefetch = s.table_bytes / sketch_band_count(m.n_out, m.band_rows) > kPrefetchTableBytes;
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_SKETCH_SETUP_INL_H_ toggle
