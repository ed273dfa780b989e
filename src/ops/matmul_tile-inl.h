// The register tile of the dense products, shared by dense_matmul and the sketch kernel's
// several-token path: kRows weight rows times kTokens activation rows, one accumulator vector
// each, so that every loaded vector feeds several FMAs.
//
// Per-target code: include it from a file that Highway's foreach_target.h compiles once per
// target, after hwy/highway.h (the guard below lets each target's pass see it again).
#if defined(SUBBIT_OPS_MATMUL_TILE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBBIT_OPS_MATMUL_TILE_INL_H_
#undef SUBBIT_OPS_MATMUL_TILE_INL_H_
#else
#define SUBBIT_OPS_MATMUL_TILE_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// acc[r][t] = Σ_{i < end} w_r[i] · x_t[i] over the whole vectors of [0, n), where end is returned
// (n rounded down to the vector length); load_row(r, i) returns weights [i, i + lanes) of row r as
// floats, xs[t] is token row t.
template <int kRows, int kTokens, class DF, class LoadRow>
HWY_INLINE int64_t TileDots(DF df, int64_t n, const LoadRow& load_row, const float* const* xs,
                            hn::Vec<DF> (&acc)[kRows][kTokens]) {
  const int64_t lanes = hn::Lanes(df);
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::Zero(df);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::Vec<DF> w[kRows];
    for (int r = 0; r < kRows; ++r) w[r] = load_row(r, i);
    for (int t = 0; t < kTokens; ++t) {
      const auto xv = hn::LoadU(df, xs[t] + i);
      for (int r = 0; r < kRows; ++r) acc[r][t] = hn::MulAdd(w[r], xv, acc[r][t]);
    }
  }
  return i;
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBBIT_OPS_MATMUL_TILE_INL_H_ toggle
