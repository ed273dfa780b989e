// The portable binary16 conversions (used where the compiler lacks _Float16) against the
// compiler's own, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/dtype.h"

namespace subbit {

TEST(Float16, PortableDecodeKnownValues) {
  EXPECT_EQ(f16_to_f32_portable(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32_portable(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32_portable(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32_portable(0x0001), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(f16_to_f32_portable(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32_portable(0x7e01)));
  EXPECT_TRUE(std::signbit(f16_to_f32_portable(0x8000)));
}

TEST(Float16, PortableEncodeRoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16_portable(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16_portable(1.0f + 0x1p-11f), 0x3c00);      // tie: down to even
  EXPECT_EQ(f32_to_f16_portable(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie: up to even
  EXPECT_EQ(f32_to_f16_portable(65519.0f), 0x7bff);             // below the tie
  EXPECT_EQ(f32_to_f16_portable(65520.0f), 0x7c00);             // tie to infinity
  EXPECT_EQ(f32_to_f16_portable(0x1p-25f), 0x0000);             // tie: down to zero
  EXPECT_EQ(f32_to_f16_portable(3 * 0x1p-25f), 0x0002);         // subnormal tie: up
  EXPECT_EQ(f32_to_f16_portable(0x1p-14f - 0x1p-26f), 0x0400);  // rounds to normal
  EXPECT_EQ(f32_to_f16_portable(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32_to_f16_portable(std::nanf("")) & 0x7e00, 0x7e00);
}

#if defined(__FLT16_MAX__)
TEST(Float16, PortableMatchesCompilerEverywhere) {
  for (uint32_t h = 0; h < 65536; ++h)
    ASSERT_EQ(std::bit_cast<uint32_t>(f16_to_f32_portable(uint16_t(h))),
              std::bit_cast<uint32_t>(f16_to_f32(uint16_t(h))))
        << "half 0x" << std::hex << h;
  // Every float whose low 12 bits are a few chosen patterns: all exponents and the rounding cases
  // (below, at and above the tie, with odd and even kept bits).
  for (uint64_t high = 0; high < (1u << 20); ++high)
    for (uint32_t low : {0x000u, 0x001u, 0x7ffu, 0x800u, 0x801u, 0xfffu}) {
      const float f = std::bit_cast<float>(uint32_t(high << 12) | low);
      ASSERT_EQ(f32_to_f16_portable(f), f32_to_f16(f))
          << "float bits 0x" << std::hex << std::bit_cast<uint32_t>(f);
    }
}
#endif

}  // namespace subbit
