#pragma once
// Element types of stored tensors and their scalar conversions to float.
#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace subbit {

enum class DType : uint8_t { F32, F16, BF16 };

constexpr size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
constexpr std::string_view dtype_name(DType t) {
  return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16";
}

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE binary16 by bit manipulation, rounding to nearest even like the hardware conversion. Used
// where the compiler has no _Float16 (clang before 15 on x86, which the fuzz build uses); the
// tests check it against _Float16 where both exist.
inline float f16_to_f32_portable(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = float(mantissa) * 0x1p-24f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(magnitude) | sign);
  }
  if (exponent == 31)  // infinity, or NaN made quiet as the hardware does
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa != 0 ? 0x400000u : 0u) |
                                (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t f32_to_f16_portable(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u | uint16_t((magnitude >> 13) & 0x3ffu);  // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (magnitude < 0x38800000u) {                        // below 2^-14: subnormal half (or zero)
    // Scaling by 2^24 is exact; the float addition of 2^23 rounds the integer part to nearest even.
    const float scaled = std::bit_cast<float>(magnitude) * 0x1p24f;
    return sign | uint16_t(std::bit_cast<uint32_t>(scaled + 0x1p23f) - 0x4b000000u);
  }
  magnitude -= 112u << 23;                         // rebias the exponent from 127 to 15
  magnitude += 0xfffu + ((magnitude >> 13) & 1u);  // round to nearest even; carries are correct
  return sign | uint16_t(magnitude >> 13);
}

#if defined(__FLT16_MAX__)
inline float f16_to_f32(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }
inline uint16_t f32_to_f16(float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
#else
inline float f16_to_f32(uint16_t h) { return f16_to_f32_portable(h); }
inline uint16_t f32_to_f16(float f) { return f32_to_f16_portable(f); }
#endif

// The fp16 number nearest to f (ties to even), as a float: what a stored fp16 scale holds.
inline float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

}  // namespace subbit
