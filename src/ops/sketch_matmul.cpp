// What the sketch product does before its kernels run: checks the layer, lays out the
// activations, picks the table layout's product (ops/sketch_kernels.h); and the scalar reference.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "common/error.h"
#include "ops/parallel.h"
#include "ops/reference.h"
#include "ops/sketch_kernels.h"
#include "ops/thread_scratch.h"
#include "ops/vector_ops.h"

namespace subbit {

namespace {

// Every row decoded by the scalar decoder, then multiplied with each token.
void matmul_decoding_rows(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  parallel_for(m.n_out, 16, [&](int64_t begin, int64_t end) {
    float* row =
        thread_scratch<float>(ThreadScratchSlot::SketchDecodedRows, size_t(m.n_in));  // (n_in)
    for (int64_t o = begin; o < end; ++o) {
      sketch_decode_row(m, o, row);
      for (int64_t t = 0; t < tokens; ++t) y[t * m.n_out + o] = dot(row, x + t * m.n_in, m.n_in);
    }
  });
}

std::atomic<bool> bf16_products_on{true};

}  // namespace

bool set_sketch_bf16_products(bool on) { return bf16_products_on.exchange(on); }

bool sketch_bf16_products() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool supported =
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");
  return supported && bf16_products_on;
#else
  return false;
#endif
}

void sketch_matmul(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  if (m.rows < 1 || m.rows > kSketchMaxRows || m.block < 1 || m.block > kSketchMaxBlock)
    fail("sketch_matmul: {} hash rows, block {} (supported: 1..{} rows, block 1..{})", m.rows,
         m.block, kSketchMaxRows, kSketchMaxBlock);
  if (tokens == 0) return;
  // The kernels keep byte offsets into the tables in 32 bits: a table of 4 GiB or more takes the
  // row-decoding path, as do the (rule, rows) pairs without a SIMD kernel.
  bool simd = sketch_detail::has_simd_kernel(m.rule, m.rows);
  for (int k = 0; k < m.rows; ++k)
    simd = simd &&
           (m.hash_rows[k].buckets + m.hash_rows[k].salient_buckets) * uint64_t(m.bucket_bytes()) <=
               0xFFFFFFFFull;
  if (!simd) return matmul_decoding_rows(m, x, y, tokens);
  const int64_t blocks = m.blocks_per_row(), stride = m.stride();
  // The kernels read whole buckets, so x must be laid out with the same zero-padded stride per
  // block, and 64-byte aligned (loads that straddle cache lines cost the one-token product about
  // 12%); the common case (block fills the stride and divides n_in, x aligned) uses x in place.
  const auto product = m.layout == SketchTableLayout::F32    ? sketch_detail::matmul_f32
                       : m.layout == SketchTableLayout::Int8 ? sketch_detail::matmul_int8
                                                             : sketch_detail::matmul_nibble;
  if (stride == m.block && blocks * m.block == m.n_in && reinterpret_cast<uintptr_t>(x) % 64 == 0)
    return product(m, x, y, tokens);
  float* blocked =
      thread_scratch<float>(ThreadScratchSlot::SketchActivations, size_t(tokens * blocks * stride));
  if (stride == m.block && blocks * m.block == m.n_in) {
    std::copy_n(x, tokens * m.n_in, blocked);
  } else {
    std::fill_n(blocked, tokens * blocks * stride, 0.0f);  // (tokens, blocks, stride)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t width = std::min(m.block, m.n_in - b * m.block);
        std::copy_n(x + t * m.n_in + b * m.block, width, blocked + (t * blocks + b) * stride);
      }
  }
  product(m, blocked, y, tokens);
}

namespace {

template <SketchRule kRule>
float combine(const float* e, int rows) {
  float best = e[0];
  for (int k = 1; k < rows; ++k) {
    if constexpr (kRule == SketchRule::Mean)
      best += e[k];
    else if constexpr (kRule == SketchRule::AbsMinMax)
      best = std::fabs(e[k]) > std::fabs(best) ? e[k] : best;
    else
      best = std::fabs(e[k]) < std::fabs(best) ? e[k] : best;
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
    case SketchRule::AbsMinMax:
      return decode_row<SketchRule::AbsMinMax>(m, row, out);
    case SketchRule::AbsMaxMin:
      return decode_row<SketchRule::AbsMaxMin>(m, row, out);
    case SketchRule::Mean:
      return decode_row<SketchRule::Mean>(m, row, out);
  }
}

void sketch_matmul_reference(const SketchMatrix& m, const float* x, float* y, int64_t tokens) {
  matmul_reference_by_rows(
      m.n_out, m.n_in, [&](int64_t o, float* row) { sketch_decode_row(m, o, row); }, x, y, tokens);
}

}  // namespace subbit
