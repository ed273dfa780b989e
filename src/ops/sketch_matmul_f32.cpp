// The sketch product for tables of the F32 layout: fp32 tables (layers whose values are fp16)
// (ops/sketch_kernels.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/sketch_matmul_f32.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/sketch_products-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {

void SketchMatmulF32(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  MatmulWithDecoder<Decoder::F32>(m, x, y, tokens);
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subbit {

HWY_EXPORT(SketchMatmulF32);

void sketch_detail::matmul_f32(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  HWY_DYNAMIC_DISPATCH(SketchMatmulF32)(m, x, y, tokens);
}

}  // namespace subbit
#endif
