#pragma once
// Little-endian bit streams of fixed-width codes in 64-bit words, as the RTN and sketch formats
// store them: code i occupies bits [i · bits, (i + 1) · bits), least-significant bit first, and
// may straddle two words.
#include <cstdint>

namespace subbit {

// ORs `code` (< 2^bits, bits <= 32) into code slot i, which must be zero.
inline void put_bits(uint64_t* words, int64_t i, int bits, uint64_t code) {
  const int64_t bit = i * bits;
  words[bit / 64] |= code << (bit % 64);
  if (bit % 64 + bits > 64) words[bit / 64 + 1] |= code >> (64 - bit % 64);
}

// Code slot i (bits <= 32).
inline uint32_t get_bits(const uint64_t* words, int64_t i, int bits) {
  const int64_t bit = i * bits;
  uint64_t code = words[bit / 64] >> (bit % 64);
  if (bit % 64 + bits > 64) code |= words[bit / 64 + 1] << (64 - bit % 64);
  return uint32_t(code & ((uint64_t{1} << bits) - 1));
}

}  // namespace subbit
