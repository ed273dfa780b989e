#include "ops/dense_matmul.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/dense_matmul.cpp"
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/matmul_tile-inl.h"
#include "ops/parallel.h"

HWY_BEFORE_NAMESPACE();
namespace subbit::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

template <DType kType>
HWY_INLINE hn::Vec<DF> load_weights(DF d, const void* row, int64_t i) {
  if constexpr (kType == DType::F32) {
    return hn::LoadU(d, static_cast<const float*>(row) + i);
  } else {
    // BF16 is the top half of an fp32: widen and shift.
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> d32;
    const auto bits = hn::PromoteTo(d32, hn::LoadU(d16, static_cast<const uint16_t*>(row) + i));
    return hn::BitCast(d, hn::ShiftLeft<16>(bits));
  }
}

template <DType kType>
HWY_INLINE float load_weight_scalar(const void* row, int64_t i) {
  if constexpr (kType == DType::F32)
    return static_cast<const float*>(row)[i];
  else
    return bf16_to_f32(static_cast<const uint16_t*>(row)[i]);
}

// One token streams the matrix once, bound by how many lines are in flight. BF16 rows whose
// activations fit a third of L1 go one at a time, as one sequential stream requested a further
// kStreamPrefetchBytes ahead; longer rows (and F32 ones, where it lost) go four at a time, so
// four rows share each load of x, which would otherwise come from L2, each row requested
// kPrefetchBytes ahead. Zen 5, one token, one thread (docs/roofline.md): 4096x4096 BF16
// 980-1377 -> 710-716 us, 11008x4096 3310-4014 -> 2201-3345, while 4096x11008 and 28672x8192
// stay faster four rows at a time.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kStreamPrefetchBytes = 8192;
constexpr int64_t kStreamMaxInputBytes = 16 * 1024;

// kRows weight rows x kTokens activation rows (ops/matmul_tile-inl.h), then the columns past the
// last whole vector.
template <DType kType, int kRows, int kTokens>
HWY_INLINE void tile(const DenseMatrix& w, int64_t row0, const float* x, int64_t token0, float* y) {
  const DF d;
  const int64_t n_in = w.n_in;
  const size_t row_bytes = n_in * dtype_size(kType);
  const void* rows[kRows];
  for (int r = 0; r < kRows; ++r)
    rows[r] = static_cast<const uint8_t*>(w.data) + (row0 + r) * row_bytes;
  const float* xs[kTokens];
  for (int t = 0; t < kTokens; ++t) xs[t] = x + (token0 + t) * n_in;

  hn::Vec<DF> acc[kRows][kTokens];
  const int64_t whole = TileDots<kRows, kTokens>(
      d, n_in,
      [&](int r, int64_t i) HWY_ATTR __attribute__((always_inline)) {
        if constexpr (kTokens == 1)
          hwy::Prefetch(static_cast<const uint8_t*>(rows[r]) + i * dtype_size(kType) +
                        kPrefetchBytes);
        return load_weights<kType>(d, rows[r], i);
      },
      xs, acc);
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kTokens; ++t) {
      float sum = hn::GetLane(hn::SumOfLanes(d, acc[r][t]));
      for (int64_t j = whole; j < n_in; ++j)
        sum += load_weight_scalar<kType>(rows[r], j) * xs[t][j];
      y[(token0 + t) * w.n_out + row0 + r] = sum;
    }
  }
}

template <DType kType, int kRows>
HWY_INLINE void rows_all_tokens(const DenseMatrix& w, int64_t row0, const float* x, float* y,
                                int64_t tokens) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) tile<kType, kRows, 4>(w, row0, x, t, y);
  for (; t < tokens; ++t) tile<kType, kRows, 1>(w, row0, x, t, y);
}

// y[row] = W[row] · x for BF16 rows [row_begin, row_end), one row at a time, four accumulators
// over the columns so the FMA latency does not bound it.
HWY_INLINE void stream_rows(const DenseMatrix& w, const float* x, float* y, int64_t row_begin,
                            int64_t row_end) {
  constexpr DType kType = DType::BF16;
  const DF d;
  const int64_t n_in = w.n_in, lanes = hn::Lanes(d);
  const size_t row_bytes = n_in * dtype_size(kType);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = static_cast<const uint8_t*>(w.data) + r * row_bytes;
    hn::Vec<DF> acc[4] = {hn::Zero(d), hn::Zero(d), hn::Zero(d), hn::Zero(d)};
    int64_t i = 0;
    for (; i + 4 * lanes <= n_in; i += 4 * lanes) {
      const uint8_t* ahead = row + i * dtype_size(kType) + kStreamPrefetchBytes;
      for (int64_t b = 0; b < 4 * lanes * int64_t(dtype_size(kType)); b += 64)
        hwy::Prefetch(ahead + b);
      for (int k = 0; k < 4; ++k)
        acc[k] = hn::MulAdd(load_weights<kType>(d, row, i + k * lanes),
                            hn::LoadU(d, x + i + k * lanes), acc[k]);
    }
    for (; i + lanes <= n_in; i += lanes)
      acc[0] = hn::MulAdd(load_weights<kType>(d, row, i), hn::LoadU(d, x + i), acc[0]);
    float sum =
        hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(acc[0], acc[1]), hn::Add(acc[2], acc[3]))));
    for (; i < n_in; ++i) sum += load_weight_scalar<kType>(row, i) * x[i];
    y[r] = sum;
  }
}

template <DType kType>
void matmul_rows(const DenseMatrix& w, const float* x, float* y, int64_t tokens, int64_t row_begin,
                 int64_t row_end) {
  if constexpr (kType == DType::BF16) {
    if (tokens == 1 && w.n_in * int64_t(sizeof(float)) <= kStreamMaxInputBytes)
      return stream_rows(w, x, y, row_begin, row_end);
  }
  // Token blocks keep a slice of x hot in cache while a band of weight rows streams past.
  constexpr int64_t kTokenBlock = 64;
  for (int64_t t0 = 0; t0 < tokens; t0 += kTokenBlock) {
    const int64_t nt = std::min(kTokenBlock, tokens - t0);
    const float* xb = x + t0 * w.n_in;
    float* yb = y + t0 * w.n_out;
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) rows_all_tokens<kType, 4>(w, r, xb, yb, nt);
    for (; r < row_end; ++r) rows_all_tokens<kType, 1>(w, r, xb, yb, nt);
  }
}

void DenseMatmul(const DenseMatrix& w, const float* x, float* y, int64_t tokens) {
  // Bands of rows sized so each thread gets several, and each band stays in L2.
  const int64_t grain =
      std::max<int64_t>(16, std::min<int64_t>(256, w.n_out / (num_threads() * 4)));
  parallel_for(w.n_out, grain & ~int64_t{3}, [&](int64_t begin, int64_t end) {
    if (w.dtype == DType::F32)
      matmul_rows<DType::F32>(w, x, y, tokens, begin, end);
    else
      matmul_rows<DType::BF16>(w, x, y, tokens, begin, end);
  });
}

}  // namespace subbit::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "common/error.h"
#include "ops/reference.h"

namespace subbit {

HWY_EXPORT(DenseMatmul);

void dense_matmul(const DenseMatrix& w, const float* x, float* y, int64_t tokens) {
  if (w.dtype == DType::F16) fail("dense_matmul: F16 weights must be converted at load");
  HWY_DYNAMIC_DISPATCH(DenseMatmul)(w, x, y, tokens);
}

void dense_row_to_f32(const DenseMatrix& w, int64_t row, float* out) {
  const int64_t n = w.n_in;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + row * n * dtype_size(w.dtype);
  for (int64_t i = 0; i < n; ++i) {
    switch (w.dtype) {
      case DType::F32:
        out[i] = reinterpret_cast<const float*>(base)[i];
        break;
      case DType::BF16:
        out[i] = bf16_to_f32(reinterpret_cast<const uint16_t*>(base)[i]);
        break;
      case DType::F16:
        out[i] = f16_to_f32(reinterpret_cast<const uint16_t*>(base)[i]);
        break;
    }
  }
}

void dense_matmul_reference(const DenseMatrix& w, const float* x, float* y, int64_t tokens) {
  matmul_reference_by_rows(
      w.n_out, w.n_in, [&](int64_t o, float* row) { dense_row_to_f32(w, o, row); }, x, y, tokens);
}

}  // namespace subbit
#endif
