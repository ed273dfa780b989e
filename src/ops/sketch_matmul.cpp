#include "ops/sketch_matmul.h"

// Kernels (docs/ultrasketch.md, "Runtime kernels"). Per output row the hashes of all its blocks
// are computed first, SIMD over blocks, into the entries the products read: per (block, hash
// row) the byte offset of the block's bucket in the hash row's table and, for most decoders, a
// 32-bit operand (sign, step or lookup table) for the block. The products then decode each block
// from its buckets (SketchTableLayout says how the tables hold their values):
//
//   F32     fp32 tables (fp16-valued layers): value = table ^ sign mask (operand).
//   Scale8  int8 codes: value = float(q) · (±step) (operand).
//   Lut4    4-bit codes (Nibble layout) on 16-lane AVX-512 vectors, no salient set: one 64-bit
//           broadcast load and one variable shift put every lane's code in its low 4 bits, and
//           VPERMPS looks its value q · step up in a 16-float table held in a register per hash
//           row. The sign is in the offset (the Nibble layout stores negated codes next to the
//           codes), so an entry is just the 32-bit offset, and with 2 hash rows one 64-bit load
//           gets a block's both.
//   Lut4S   the same with a salient set: the operand says which table (main or salient step).
//   Scale4  4-bit codes on other targets: the same shift, sign extension, float(q) · step.
//
// q · step is exact in fp32 (|q| < 2^7, fp16 step), so every decoder produces exactly the values
// of the scalar reference. Selection (absminmax / absmaxmin) on AVX-512 is one VRANGEPS per
// extra hash row (TieBits says how ties keep going to the lowest row). Only the summation order
// of the products differs from the reference.
//
// How the kernels got here, with the measurements behind each choice:
// dev/sketch-kernel-notes.md.

#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sketch_matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>
#include <hwy/highway.h>

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

// The first step of mix64, z ^ (z >> 30), is linear over xor. For z = seed ^ r·R ^ b·B it is
// the xor of a per-(seed, row) and a per-block part, each computed once instead of per hash.
constexpr uint64_t xorshift30(uint64_t z) { return z ^ (z >> 30); }

// Which layers the SIMD kernels cover. Every (rule, hash rows, decoder, stride) is another copy of
// every kernel to compile for every target, so only what is used has one: one and two hash rows
// under every rule, three and four under the default absmaxmin (more rows measured worse,
// docs/results.md). Other layers decode each row and take dot products.
constexpr bool has_simd_kernel(SketchRule rule, int rows) {
  return rows <= 2 || rule == SketchRule::AbsMaxMin;
}

enum class Decoder : uint8_t { F32, Scale8, Lut4, Lut4S, Scale4 };

// Lut4 entries are bare 32-bit offsets laid out (padded_blocks, rows); the others are pairs of
// 32-bit words, laid out (rows, padded_blocks, 2): the operand (kLow) and the offset (kHigh), so
// the kernels read either half with one plain load while the hash pass stores whole uint64_t.
constexpr bool paired(Decoder d) { return d != Decoder::Lut4; }
constexpr int kLow = std::endian::native == std::endian::little ? 0 : 1;
constexpr int kHigh = 1 - kLow;

// One output row's entries, computed once and reused for every token of the row.
struct RowEntries {
  uint32_t* words;
  int64_t padded_blocks;
};

// Room for `count` (<= 4) rows' entries (`words` each), starting 0, 2, 1 and 3 KiB past 4 KiB
// boundaries: one row's entries are stored while another's are read at the same offsets, and
// addresses a multiple of 4 KiB apart would make the loads wait on the stores (4K aliasing).
inline std::vector<uint32_t> entry_buffer(int64_t words, int count, RowEntries* e, int64_t padded_blocks) {
  constexpr int64_t kSkew[4] = {0, 512, 256, 768};  // words
  const int64_t each = (words + 1023) / 1024 * 1024 + 1024;
  std::vector<uint32_t> buffer(each * count + 16);  // + 64 bytes for alignment
  uint32_t* first = buffer.data() + (16 - (reinterpret_cast<uintptr_t>(buffer.data()) % 64) / 4) % 16;
  for (int i = 0; i < count; ++i) e[i] = RowEntries{first + i * each + kSkew[i], padded_blocks};
  return buffer;
}

}  // namespace subbit::sketch_detail
#endif

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using sketch_detail::Decoder;
using sketch_detail::kHigh;
using sketch_detail::kLow;
using sketch_detail::paired;
using sketch_detail::RowEntries;
using DU64 = hn::ScalableTag<uint64_t>;

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
  const uint8_t* base[kSketchMaxRows];           // each hash row's table
  uint32_t operand[kSketchMaxRows][2];           // entry operand of a + block, per set
  std::vector<uint64_t> block_terms;             // (padded_blocks) xorshift30(b · B)
  int64_t blocks, padded_blocks, stride;
  int64_t table_bytes;  // all hash rows' tables
  bool prefetch;        // one band's share of the tables is large (kPrefetchTableBytes)
};

template <Decoder kDec, SketchRule kRule, class DF>
void BuildSetup(const SketchMatrix& m, Setup& s) {
  const int64_t lanes = hn::Lanes(DU64());
  s.blocks = m.blocks_per_row();
  s.padded_blocks = (s.blocks + lanes - 1) / lanes * lanes;
  s.stride = m.stride();
  s.block_terms.resize(s.padded_blocks);
  for (int64_t b = 0; b < s.padded_blocks; ++b)
    s.block_terms[b] = sketch_detail::xorshift30(uint64_t(b) * kSketchBlockMultiplier);
  s.table_bytes = 0;
  for (int k = 0; k < m.rows; ++k) {
    const SketchHashRow& hr = m.hash_rows[k];
    s.base[k] = static_cast<const uint8_t*>(hr.table);
    s.table_bytes += int64_t(hr.buckets + hr.salient_buckets) * m.bucket_bytes();
    const uint32_t tie = UseRange<kDec, kRule, DF>() ? TieBits<kRule>(k, m.rows) : 0;
    for (int set = 0; set < 2; ++set) {
      const float step = set == 0 ? hr.scale : hr.salient_scale;
      for (int i = 0; i < 16; ++i)  // q = the nibble, signed
        s.luts[k][set][i] = std::bit_cast<float>(std::bit_cast<uint32_t>(float(i < 8 ? i : i - 16) * step) | tie);
      if constexpr (kDec == Decoder::F32) s.operand[k][set] = tie;
      if constexpr (kDec == Decoder::Scale8 || kDec == Decoder::Scale4) s.operand[k][set] = std::bit_cast<uint32_t>(step);
      if constexpr (kDec == Decoder::Lut4 || kDec == Decoder::Lut4S)
        s.operand[k][set] = uint32_t(reinterpret_cast<const uint8_t*>(s.luts[k][set]) - reinterpret_cast<const uint8_t*>(s.luts));
    }
  }
  // What one row's loads range over: its band's share of the tables.
  s.prefetch = s.table_bytes / sketch_band_count(m.n_out, m.band_rows) > kPrefetchTableBytes;
}

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
  return hn::Mul(hn::And(a, low), hn::And(b, low));  // one lane: no 32-bit halves to repartition into
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
constexpr bool Nibbles(Decoder d) { return d == Decoder::Lut4 || d == Decoder::Lut4S || d == Decoder::Scale4; }

// What hashing one output row in one hash row needs (scalars: vectors cannot be struct members
// on every target; the loops hoist their broadcasts).
// `buckets` are the row's band's (SketchBand::count) and `first` its first bucket, in the high
// half as the bucket index is there.
struct HashConsts {
  uint64_t seed, buckets, operand, first;                                 // main set
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
                    (hr.buckets + salient_band.first) << 32};  // the salient buckets follow the main ones
}

// One hash row's entries of blocks [b, b + lanes): the byte offsets of their buckets and their
// operands (each < 2^32 in its lane). `salient` (kSalient only) marks the salient blocks.
template <Decoder kDec, int64_t kStride, bool kSalient>
HWY_INLINE void HashBlocks(const Setup& s, const HashConsts& c, const hn::Vec<DU64> block_terms,
                           const hn::Mask<DU64> salient, hn::Vec<DU64>& offset, hn::Vec<DU64>& operand) {
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
  auto bucket = hn::Add(MulLow32(hn::ShiftRight<32>(h), buckets), hn::ShiftRight<32>(MulLow32(h, buckets)));
  if constexpr (kSalient) bucket = hn::Add(bucket, hn::IfThenElse(salient, hn::Set(d, c.salient_first), hn::Set(d, c.first)));
  else bucket = hn::Add(bucket, hn::Set(d, c.first));
  if constexpr (kStride != 0 && Nibbles(kDec)) {
    // bucket · kStride | (negative ? kStride / 2 : 0): the negated codes follow the codes. The
    // bits below kStride come from h shifted so that its bit 0 lands on kStride / 2.
    const auto high_bits = hn::Set(d, ~uint64_t(kStride - 1));
    offset = hn::OrAnd(hn::AndNot(high_bits, hn::ShiftLeft<kBucketShift<kDec, kStride> - 1>(h)),
                       hn::ShiftRight<32 - kBucketShift<kDec, kStride>>(bucket), high_bits);
  } else if constexpr (kStride != 0) {
    offset = hn::ShiftRight<32 - kBucketShift<kDec, kStride>>(hn::And(bucket, hn::Set(d, 0xFFFFFFFF00000000ull)));
  } else {
    offset = MulLow32(hn::ShiftRight<32>(bucket), hn::Set(d, uint64_t(BucketBytes<kDec>(s.stride))));
    if constexpr (Nibbles(kDec))
      offset = hn::Add(offset, hn::IfThenElseZero(hn::TestBit(h, hn::Set(d, 1)), hn::Set(d, uint64_t(s.stride / 2))));
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
  RowHasher(const SketchMatrix& m, const Setup& s, int64_t row, RowEntries& out) : m_(m), s_(s), row_(row), out_(out) {
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
      const uint64_t bits = sketch_detail::mask_bits(m_.salient_mask, m_.n_out * s_.blocks, row_ * s_.blocks + b,
                                                     std::min<int64_t>(lanes, s_.blocks - b));
      salient = hn::TestBit(hn::Set(d, bits), hn::Shl(hn::Set(d, 1), hn::Iota(d, 0)));
    }
    const auto block_terms = hn::LoadU(d, s_.block_terms.data() + b);
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
      hn::StoreU(hn::Or(offset, hn::ShiftLeft<32>(offset1)), d, reinterpret_cast<uint64_t*>(out_.words) + b);
    } else {
      HWY_ALIGN uint64_t lane_offsets[kRows][hn::MaxLanes(d)];
      for (int k = 0; k < kRows; ++k) {
        HashBlocks<kDec, kStride, kSalient>(s_, c_[k], block_terms, salient, offset, operand);
        hn::Store(offset, d, lane_offsets[k]);
      }
      for (int64_t i = 0; i < lanes; ++i)
        for (int k = 0; k < kRows; ++k) out_.words[(b + i) * kRows + k] = uint32_t(lane_offsets[k][i]);
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
  if (m.salient_mask != nullptr) RowHasher<kDec, kRows, kStride, true>(m, s, row, out).All();
  else RowHasher<kDec, kRows, kStride, false>(m, s, row, out).All();
}

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
HWY_INLINE hn::Vec<DF> Value(DF df, const Setup& s, int k, const uint8_t* bucket, const uint32_t* operand, int64_t v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  if constexpr (kDec == Decoder::F32) {
    return hn::Xor(hn::LoadU(df, reinterpret_cast<const float*>(bucket) + v), hn::BitCast(df, hn::Set(du, *operand)));
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
      const auto shift = hn::ShiftLeft<2>(hn::ShiftRight<1>(hn::Add(hn::Iota(du, 0), hn::Set(du, uint32_t(v % 16)))));
      codes = hn::Shr(hn::BitCast(du, hn::Set(d64, word)), shift);
    }
    if constexpr (kDec == Decoder::Scale4) {
      const auto q = hn::ShiftRight<28>(hn::ShiftLeft<28>(hn::BitCast(di, codes)));
      return hn::Mul(hn::ConvertTo(df, q), hn::BitCast(df, hn::Set(du, *operand)));
    } else {
#if SUBBIT_SKETCH_AVX512
      // VPERMPS reads only the low 4 bits of each index.
      const float* lut = kDec == Decoder::Lut4
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
      if constexpr (kRule == SketchRule::Mean) best = hn::Add(best, e[k]);
      else if constexpr (kRule == SketchRule::AbsMinMax) best = hn::IfThenElse(hn::Abs(e[k]) > hn::Abs(best), e[k], best);
      else best = hn::IfThenElse(hn::Abs(e[k]) < hn::Abs(best), e[k], best);
    }
    if constexpr (kRule == SketchRule::Mean && kRows == 3) return hn::Div(best, hn::Set(df, 3.0f));
    // x · (1/2^k) rounds exactly like x / 2^k.
    if constexpr (kRule == SketchRule::Mean && kRows > 1) return hn::Mul(best, hn::Set(df, 1.0f / kRows));
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
    for (int k = 0; k < kRows; ++k) requested_[k] = sketch_band(m.hash_rows[k].buckets, m.n_out, m.band_rows, row_begin).first;
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
      stream.lines = std::max(stream.lines, int64_t(((end - requested_[k]) * bucket_bytes + 63) / 64));
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
HWY_INLINE void AccumulateBlock(const Setup& s, const RowEntries& e, int64_t b, const float* x, hn::Vec<DF>& acc) {
  const DF df;
  const int64_t stride = Stride<kStride>(s);
  BlockRefs<kRows> r;
  Refs<kDec, kRows>(s, e, b, r);
  for (int64_t v = 0; v < stride; v += hn::Lanes(df))
    acc = hn::MulAdd(Decode<kDec, kRule, kRows>(df, s, r, v), hn::LoadU(df, x + b * stride + v), acc);
}

// Blocks b and b + 1 of two output rows: even0/even1 += block b, odd0/odd1 += block b + 1.
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_INLINE void TwoBlocksTwoRows(const Setup& s, const RowEntries& e0, const RowEntries& e1, int64_t b, const float* x,
                                 hn::Vec<DF>& even0, hn::Vec<DF>& even1, hn::Vec<DF>& odd0, hn::Vec<DF>& odd1) {
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

// Two output rows, one token: Σ_blocks decode(block) · x(block) for each; x is blocked (block b
// at x + b · stride, zero past the block's weights) and 64-byte aligned. Two rows share each x
// load (the product is bound by loads: entries, codes and x), and even and odd blocks
// accumulate separately so the FMA latency does not bound it. With e1 == nullptr, one row.
// Not inlined: the loop gets the registers to itself (inlined, GCC spills its indices).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_NOINLINE void RowDots(const Setup& s, const RowEntries& e0, const RowEntries* e1, const float* x, float* y0,
                          float* y1, TableStream<kRows>& stream) {
  const DF df;
  const int64_t blocks = s.blocks;
  auto even0 = hn::Zero(df), odd0 = hn::Zero(df), even1 = hn::Zero(df), odd1 = hn::Zero(df);
  int64_t b = 0;
  if (e1 != nullptr) {
    for (; b + 2 <= blocks && stream.lines > 0; b += 2) {
      StreamLine(stream);
      TwoBlocksTwoRows<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
    }
    if (s.prefetch) {
      for (; b + kPrefetchAhead + 2 <= blocks; b += 2) {
        Prefetch<kDec, kRows>(s, e0, b + kPrefetchAhead);
        Prefetch<kDec, kRows>(s, *e1, b + kPrefetchAhead);
        Prefetch<kDec, kRows>(s, e0, b + kPrefetchAhead + 1);
        Prefetch<kDec, kRows>(s, *e1, b + kPrefetchAhead + 1);
        TwoBlocksTwoRows<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
      }
    }
    for (; b + 2 <= blocks; b += 2)
      TwoBlocksTwoRows<kDec, kRule, kRows, DF, kStride>(s, e0, *e1, b, x, even0, even1, odd0, odd1);
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

// Two output rows (e1 == nullptr: one) times kT tokens: each block is decoded once and multiplied
// with every token; xs: kT blocked token rows; out (2, kT).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride, int kT>
HWY_NOINLINE void RowDotsTokens(const Setup& s, const RowEntries& e0, const RowEntries* e1, const float* const* xs,
                                float* out) {
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
        for (int t = 0; t < kT; ++t) acc0[t] = hn::MulAdd(w0, hn::Load(df, x[t] + b * stride + v), acc0[t]);
      }
    }
  }
  for (int t = 0; t < kT; ++t) out[t] = hn::GetLane(hn::SumOfLanes(df, acc0[t]));
}

// Rows of W in the blocked layout (blocks · stride floats each, 64-byte aligned): e0 into out0
// and, unless e1 is nullptr, e1 into out1 (two rows keep more bucket loads in flight).
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
HWY_NOINLINE void DecodeRows(const Setup& s, const RowEntries& e0, const RowEntries* e1, float* HWY_RESTRICT out0,
                             float* HWY_RESTRICT out1) {
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
    for (int64_t v = 0; v < stride; v += hn::Lanes(df)) hn::Store(Decode<kDec, kRule, kRows>(df, s, r0, v), df, out0 + b * stride + v);
  }
}

// out (kR, kT) = band rows (kR, width) · token rows xs[0 .. kT) (each `width` floats); all
// 64-byte aligned. Each loaded vector feeds several FMAs (kR · kT accumulators).
template <class DF, int kR, int kT>
HWY_NOINLINE void BandTile(const float* band, int64_t width, const float* const* xs, float* out) {
  const DF df;
  hn::Vec<DF> acc[kR][kT];
  for (int i = 0; i < kR; ++i)
    for (int t = 0; t < kT; ++t) acc[i][t] = hn::Zero(df);
  for (int64_t c = 0; c < width; c += hn::Lanes(df)) {
    hn::Vec<DF> w[kR];
    for (int i = 0; i < kR; ++i) w[i] = hn::Load(df, band + i * width + c);
    for (int t = 0; t < kT; ++t) {
      const auto xv = hn::Load(df, xs[t] + c);
      for (int i = 0; i < kR; ++i) acc[i][t] = hn::MulAdd(w[i], xv, acc[i][t]);
    }
  }
  for (int i = 0; i < kR; ++i)
    for (int t = 0; t < kT; ++t) out[i * kT + t] = hn::GetLane(hn::SumOfLanes(df, acc[i][t]));
}

// Rows per band and tokens per tile of the several-token product: 4 x 4 accumulators fit
// AVX-512's 32 registers next to the loaded vectors; narrower targets have 16 registers.
template <class DF>
constexpr int kBandRows = hn::MaxLanes(DF()) >= 16 ? 4 : 2;
constexpr int kTileTokens = 4;
// Up to this many tokens, decoding is fused into the products; above it, rows are decoded once
// into a band.
constexpr int64_t kFusedMaxTokens = 8;

// Rows [row_begin, row_end) of y; x is blocked, (tokens, blocks · stride), 64-byte aligned.
template <Decoder kDec, SketchRule kRule, int kRows, class DF, int64_t kStride>
void MatmulRows(const SketchMatrix& m, const float* x, float* y, int64_t tokens, int64_t row_begin,
                int64_t row_end) {
  Setup s;
  BuildSetup<kDec, kRule, DF>(m, s);
  const int64_t width = s.blocks * s.stride;
  RowEntries e[2];
  const std::vector<uint32_t> entries = sketch_detail::entry_buffer(2 * kRows * s.padded_blocks, 2, e, s.padded_blocks);
  if (tokens == 1) {
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
  if (tokens <= kFusedMaxTokens) {
    // A few tokens: decoding fused into the products, up to kT tokens at a time (2 rows x 8 tokens
    // are 16 accumulators, which fit AVX-512's 32 registers next to the decoder's; narrower
    // targets have 16). Tokens past the last read zeros; their products are dropped.
    constexpr int kT = Is512<DF>() ? 8 : 4;
    const hwy::AlignedFreeUniquePtr<float[]> zeros = hwy::AllocateAligned<float>(size_t(width));
    std::fill_n(zeros.get(), width, 0.0f);
    float out[2 * kT];
    for (int64_t r = row_begin; r < row_end; r += 2) {
      const bool pair = r + 1 < row_end;
      Hash<kDec, kRows, kStride>(m, s, r, e[0]);
      if (pair) Hash<kDec, kRows, kStride>(m, s, r + 1, e[1]);
      for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
        const float* xs[kT];
        for (int t = 0; t < kT; ++t) xs[t] = t0 + t < tokens ? x + (t0 + t) * width : zeros.get();
        const int64_t left = tokens - t0;
        const int n = left <= 2 ? 2 : left <= 4 ? 4 : kT;  // tokens in this tile
        if (n == 2) RowDotsTokens<kDec, kRule, kRows, DF, kStride, 2>(s, e[0], pair ? &e[1] : nullptr, xs, out);
        else if (n == 4) RowDotsTokens<kDec, kRule, kRows, DF, kStride, 4>(s, e[0], pair ? &e[1] : nullptr, xs, out);
        else RowDotsTokens<kDec, kRule, kRows, DF, kStride, kT>(s, e[0], pair ? &e[1] : nullptr, xs, out);
        for (int i = 0; i < (pair ? 2 : 1); ++i)
          for (int t = 0; t < n && t0 + t < tokens; ++t) y[(t0 + t) * m.n_out + r + i] = out[i * n + t];
      }
    }
    return;
  }
  // Several tokens: decode a band of rows once into an L1/L2-sized buffer, then multiply it with
  // every token, kTileTokens at a time (tokens past the last read zeros; their products are
  // dropped), so decoding costs once per row, not once per token.
  constexpr int kR = kBandRows<DF>;
  const hwy::AlignedFreeUniquePtr<float[]> band = hwy::AllocateAligned<float>(size_t(kR * width));
  const hwy::AlignedFreeUniquePtr<float[]> zeros = hwy::AllocateAligned<float>(size_t(width));
  std::fill_n(zeros.get(), width, 0.0f);
  float out[kR * kTileTokens];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kR) {
    const int64_t nr = std::min<int64_t>(kR, row_end - r0);
    for (int64_t i = 0; i < nr; i += 2) {
      Hash<kDec, kRows, kStride>(m, s, r0 + i, e[0]);
      if (i + 1 < nr) Hash<kDec, kRows, kStride>(m, s, r0 + i + 1, e[1]);
      DecodeRows<kDec, kRule, kRows, DF, kStride>(s, e[0], i + 1 < nr ? &e[1] : nullptr, band.get() + i * width,
                                                  band.get() + (i + 1) * width);
    }
    for (int64_t t0 = 0; t0 < tokens; t0 += kTileTokens) {
      const float* xs[kTileTokens];
      for (int t = 0; t < kTileTokens; ++t) xs[t] = t0 + t < tokens ? x + (t0 + t) * width : zeros.get();
      if (nr == kR) {
        BandTile<DF, kR, kTileTokens>(band.get(), width, xs, out);
      } else {
        for (int64_t i = 0; i < nr; ++i) BandTile<DF, 1, kTileTokens>(band.get() + i * width, width, xs, out + i * kTileTokens);
      }
      for (int64_t i = 0; i < nr; ++i)
        for (int t = 0; t < kTileTokens && t0 + t < tokens; ++t) y[(t0 + t) * m.n_out + r0 + i] = out[i * kTileTokens + t];
    }
  }
}

template <Decoder kDec, SketchRule kRule, int kRows>
void MatmulRowsForStride(const SketchMatrix& m, const float* x, float* y, int64_t tokens, int64_t row_begin,
                         int64_t row_end) {
  using D16 = hn::CappedTag<float, 16>;
  // Block 16 (the default) has its own instantiation; every other stride shares the generic one
  // (each instantiation is another copy of every kernel to compile, docs/building.md). Its vectors
  // must divide every stride it serves: 8 and multiples of 16 for fp32 and int8 tables, multiples
  // of 16 only for the Nibble layout (sketch_bucket_stride).
  using DGeneric = std::conditional_t<Nibbles(kDec), D16, hn::CappedTag<float, 8>>;
  if (m.stride() == 16) return MatmulRows<kDec, kRule, kRows, D16, 16>(m, x, y, tokens, row_begin, row_end);
  return MatmulRows<kDec, kRule, kRows, DGeneric, 0>(m, x, y, tokens, row_begin, row_end);
}

template <SketchRule kRule, int kRows>
void MatmulRowsForDecoder(const SketchMatrix& m, const float* x, float* y, int64_t tokens, int64_t row_begin,
                          int64_t row_end) {
  switch (m.layout) {
    case SketchTableLayout::F32:
      return MatmulRowsForStride<Decoder::F32, kRule, kRows>(m, x, y, tokens, row_begin, row_end);
    case SketchTableLayout::Int8:
      return MatmulRowsForStride<Decoder::Scale8, kRule, kRows>(m, x, y, tokens, row_begin, row_end);
    case SketchTableLayout::Nibble:
      if constexpr (Is512<hn::CappedTag<float, 16>>()) {
        if (m.salient_mask != nullptr)
          return MatmulRowsForStride<Decoder::Lut4S, kRule, kRows>(m, x, y, tokens, row_begin, row_end);
        return MatmulRowsForStride<Decoder::Lut4, kRule, kRows>(m, x, y, tokens, row_begin, row_end);
      } else {
        return MatmulRowsForStride<Decoder::Scale4, kRule, kRows>(m, x, y, tokens, row_begin, row_end);
      }
  }
}

void SketchMatmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  // Waking the OpenMP team costs more than a small product: those run on the calling thread.
  const bool small = m.n_out * m.n_in * tokens < (int64_t{1} << 18);
  const int64_t grain =
      small ? m.n_out : std::max<int64_t>(8, std::min<int64_t>(128, m.n_out / (num_threads() * 4)));
  using enum SketchRule;
  parallel_for(m.n_out, grain, [&](int64_t begin, int64_t end) {
    // The pairs sketch_detail::has_simd_kernel lists; one hash row is the same under every rule.
    if (m.rows == 1) return MatmulRowsForDecoder<AbsMaxMin, 1>(m, x, y, tokens, begin, end);
    if (m.rule == AbsMinMax) return MatmulRowsForDecoder<AbsMinMax, 2>(m, x, y, tokens, begin, end);
    if (m.rule == Mean) return MatmulRowsForDecoder<Mean, 2>(m, x, y, tokens, begin, end);
    if (m.rows == 2) return MatmulRowsForDecoder<AbsMaxMin, 2>(m, x, y, tokens, begin, end);
    if (m.rows == 3) return MatmulRowsForDecoder<AbsMaxMin, 3>(m, x, y, tokens, begin, end);
    return MatmulRowsForDecoder<AbsMaxMin, 4>(m, x, y, tokens, begin, end);
  });
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>

#include "common/error.h"
#include "ops/reference.h"
#include "ops/vector_ops.h"

namespace subbit {

HWY_EXPORT(SketchMatmul);

namespace {

// Every row decoded by the scalar decoder, then multiplied with each token.
void matmul_decoding_rows(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  parallel_for(m.n_out, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(m.n_in);
    for (int64_t o = begin; o < end; ++o) {
      sketch_decode_row(m, o, row.data());
      for (int64_t t = 0; t < tokens; ++t) y[t * m.n_out + o] = dot(row.data(), x + t * m.n_in, m.n_in);
    }
  });
}

}  // namespace

void sketch_matmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  if (m.rows < 1 || m.rows > kSketchMaxRows || m.block < 1 || m.block > kSketchMaxBlock)
    fail("sketch_matmul: {} hash rows, block {} (supported: 1..{} rows, block 1..{})", m.rows, m.block,
         kSketchMaxRows, kSketchMaxBlock);
  if (tokens == 0) return;
  // The kernels keep byte offsets into the tables in 32 bits: a table of 4 GiB or more takes the
  // row-decoding path, as do the (rule, rows) pairs without a SIMD kernel.
  bool simd = sketch_detail::has_simd_kernel(m.rule, m.rows);
  for (int k = 0; k < m.rows; ++k)
    simd = simd && (m.hash_rows[k].buckets + m.hash_rows[k].salient_buckets) * uint64_t(m.bucket_bytes()) <= 0xFFFFFFFFull;
  if (!simd) return matmul_decoding_rows(m, x, y, tokens);
  const int64_t blocks = m.blocks_per_row(), stride = m.stride();
  // The kernels read whole buckets, so x must be laid out with the same zero-padded stride per
  // block, and 64-byte aligned (loads that straddle cache lines cost the one-token product about
  // 12%); the common case (block fills the stride and divides n_in, x aligned) uses x in place.
  if (stride == m.block && blocks * m.block == m.n_in && reinterpret_cast<uintptr_t>(x) % 64 == 0) {
    HWY_DYNAMIC_DISPATCH(SketchMatmul)(m, x, y, tokens);
    return;
  }
  const hwy::AlignedFreeUniquePtr<float[]> blocked = hwy::AllocateAligned<float>(size_t(tokens * blocks * stride));
  if (!blocked) fail("sketch_matmul: out of memory for {} x {} activations", tokens, blocks * stride);
  if (stride == m.block && blocks * m.block == m.n_in) {
    std::copy_n(x, tokens * m.n_in, blocked.get());
  } else {
    std::fill_n(blocked.get(), tokens * blocks * stride, 0.0f);  // (tokens, blocks, stride)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t width = std::min(m.block, m.n_in - b * m.block);
        std::copy_n(x + t * m.n_in + b * m.block, width, blocked.get() + (t * blocks + b) * stride);
      }
  }
  HWY_DYNAMIC_DISPATCH(SketchMatmul)(m, blocked.get(), y, tokens);
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
  for (int64_t b = 0; b < m.blocks_per_row(); ++b) {
    uint64_t index[kSketchMaxRows];
    bool negative[kSketchMaxRows];
    for (int k = 0; k < m.rows; ++k) index[k] = m.bucket_index(k, row, b, &negative[k]);
    const int64_t width = std::min(m.block, m.n_in - b * m.block);
    for (int64_t j = 0; j < width; ++j) {
      float e[kSketchMaxRows] = {};
      for (int k = 0; k < m.rows; ++k) {
        const float value = m.value(k, index[k], j);
        e[k] = negative[k] ? -value : value;
      }
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
  matmul_reference_by_rows(m.n_out, m.n_in, [&](int64_t o, float* row) { sketch_decode_row(m, o, row); }, x, y, tokens);
}

}  // namespace subbit
#endif
