// The sketch product for tables of the Int8 layout: int8 codes (ops/sketch_kernels.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sketch_matmul_int8.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/sketch_products-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {

void SketchMatmulInt8(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  MatmulWithDecoder<Decoder::Scale8>(m, x, y, tokens);
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subbit {

HWY_EXPORT(SketchMatmulInt8);

void sketch_detail::matmul_int8(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  HWY_DYNAMIC_DISPATCH(SketchMatmulInt8)(m, x, y, tokens);
}

}  // namespace subbit
#endif
