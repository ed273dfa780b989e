#pragma once
// The UltraSketch product's kernels (docs/ultrasketch.md, "Runtime kernels"). Per output row the
// hashes of all its blocks are computed first, SIMD over blocks, into the entries the products
// read: per (block, hash row) the byte offset of the block's bucket in the hash row's table and,
// for most decoders, a 32-bit operand (sign, step or lookup table) for the block. The products
// then decode each block from its buckets (SketchTableLayout says how the tables hold their
// values):
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
// of the products differs from the reference, except in the BF16 one-token products of Lut4
// layers with two hash rows, absmaxmin and block 32 on CPUs with AVX512_BF16 and AVX512_VBMI
// (RowDotsBf16, on unless set_sketch_bf16_products(false)): they select by rank on bytes and
// multiply BF16-rounded weights with BF16-rounded activations.
//
// Where the parts live. Per-target code, in the order each part builds on the one before:
//   sketch_setup-inl.h     what a product needs of a layer (Setup), selection helpers
//   sketch_hash-inl.h      hashing an output row's blocks into its entries
//   sketch_decode-inl.h    decoding weights from their buckets, the read-back rules
//   sketch_products-inl.h  the one-token, few-token and many-token products over row ranges
// One translation unit per table layout instantiates the products for its decoders
// (sketch_matmul_f32.cpp, _int8.cpp, _nibble.cpp): their decoders and hash passes are disjoint, so
// nothing is compiled twice and the three compile in parallel (docs/building.md).
// sketch_matmul.cpp checks the layer, lays out the activations and picks the layout's product.
//
// How the kernels got here, with the measurements behind each choice:
// dev/sketch-kernel-notes.md.
#include <algorithm>
#include <bit>
#include <cstdint>

#include "ops/sketch_matmul.h"
#include "ops/thread_scratch.h"

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

// Entries for `count` (<= 4) rows (`words` each) in this thread's scratch, starting 0, 2, 1 and
// 3 KiB past 4 KiB boundaries: one row's entries are stored while another's are read at the same
// offsets, and addresses a multiple of 4 KiB apart would make the loads wait on the stores (4K
// aliasing).
inline void entry_buffers(int64_t words, int count, int64_t padded_blocks, RowEntries* e) {
  constexpr int64_t kSkew[4] = {0, 512, 256, 768};  // words
  const int64_t each = (words + 1023) / 1024 * 1024 + 1024;
  uint32_t* first =
      thread_scratch<uint32_t>(ThreadScratchSlot::SketchEntries, size_t(each * count));
  for (int i = 0; i < count; ++i) e[i] = RowEntries{first + i * each + kSkew[i], padded_blocks};
}

// The products of one table layout, x blocked (tokens, blocks · stride) and 64-byte aligned,
// multithreaded over output rows; best target at run time.
void matmul_f32(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
void matmul_int8(const SketchMatrix& m, const float* x, float* y, int64_t tokens);
void matmul_nibble(const SketchMatrix& m, const float* x, float* y, int64_t tokens);

}  // namespace subbit::sketch_detail
