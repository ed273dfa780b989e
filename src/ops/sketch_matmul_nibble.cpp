// The sketch product for tables of the Nibble layout: 4-bit codes (ops/sketch_kernels.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sketch_matmul_nibble.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/sketch_products-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {

void SketchMatmulNibble(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  if constexpr (Is512<hn::CappedTag<float, 16>>()) {
    if (m.salient_mask != nullptr) return MatmulWithDecoder<Decoder::Lut4S>(m, x, y, tokens);
    return MatmulWithDecoder<Decoder::Lut4>(m, x, y, tokens);
  } else {
    return MatmulWithDecoder<Decoder::Scale4>(m, x, y, tokens);
  }
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subbit {

HWY_EXPORT(SketchMatmulNibble);

void sketch_detail::matmul_nibble(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  HWY_DYNAMIC_DISPATCH(SketchMatmulNibble)(m, x, y, tokens);
}

}  // namespace subbit
#endif
