// Standalone experiment behind src/ops/dense_matmul.cpp's one-token BF16 paths: which order of
// reading a BF16 matrix (out, in) streams it fastest for one token, on an AVX-512 CPU with BF16
// (not part of the build; results in dev/dense-bf16-kernel-notes.md).
//
//   g++ -O3 -march=native -o /tmp/dense_patterns dev/dense_bf16_access_patterns.cpp
//   /tmp/dense_patterns OUT IN REPS VARIANT...
//
// Variants (each run REPS times, round robin with the others, median printed):
//   rowD   one row at a time, fp32 x, widen + FMA, 4 accumulators, rows requested D bytes ahead
//   tileRxD  R rows at a time (R = 2, 4, 8) sharing each load of x, each row requested D ahead
//   ggml   one row at a time, x rounded to bf16, vdpbf16ps (ggml's bf16 vec_dot), not exact
//   split3 one row at a time, x split exactly into three bf16 terms, three vdpbf16ps per load
//   read   the loads alone (integer sums): the one-stream read ceiling
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

__m512 widen(const uint16_t* p) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

void one_row(const uint16_t* w, const float* x, float* y, int64_t n_out, int64_t n_in,
             int64_t ahead) {
  for (int64_t o = 0; o < n_out; ++o) {
    const uint16_t* row = w + o * n_in;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (int64_t i = 0; i < n_in; i += 64) {
      if (ahead > 0) {
        _mm_prefetch(reinterpret_cast<const char*>(row + i) + ahead, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(row + i) + ahead + 64, _MM_HINT_T0);
      }
      for (int k = 0; k < 4; ++k)
        a[k] = _mm512_fmadd_ps(widen(row + i + 16 * k), _mm512_loadu_ps(x + i + 16 * k), a[k]);
    }
    y[o] =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  }
}

template <int R>
void tile(const uint16_t* w, const float* x, float* y, int64_t n_out, int64_t n_in, int64_t ahead) {
  for (int64_t o = 0; o < n_out; o += R) {
    __m512 a[R];
    const uint16_t* rows[R];
    for (int k = 0; k < R; ++k) a[k] = _mm512_setzero_ps(), rows[k] = w + (o + k) * n_in;
    for (int64_t i = 0; i < n_in; i += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i);
      for (int k = 0; k < R; ++k) {
        if (ahead > 0)
          _mm_prefetch(reinterpret_cast<const char*>(rows[k] + i) + ahead, _MM_HINT_T0);
        a[k] = _mm512_fmadd_ps(widen(rows[k] + i), xv, a[k]);
      }
    }
    for (int k = 0; k < R; ++k) y[o + k] = _mm512_reduce_add_ps(a[k]);
  }
}

void ggml_like(const uint16_t* w, const uint16_t* xb, float* y, int64_t n_out, int64_t n_in) {
  for (int64_t o = 0; o < n_out; ++o) {
    const uint16_t* row = w + o * n_in;
    __m512 c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n_in; i += 64) {
      c1 = _mm512_dpbf16_ps(c1, (__m512bh)_mm512_loadu_si512(row + i),
                            (__m512bh)_mm512_loadu_si512(xb + i));
      c2 = _mm512_dpbf16_ps(c2, (__m512bh)_mm512_loadu_si512(row + i + 32),
                            (__m512bh)_mm512_loadu_si512(xb + i + 32));
    }
    y[o] = _mm512_reduce_add_ps(_mm512_add_ps(c1, c2));
  }
}

void split3(const uint16_t* w, const uint16_t* x3, float* y, int64_t n_out, int64_t n_in) {
  for (int64_t o = 0; o < n_out; ++o) {
    const uint16_t* row = w + o * n_in;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0;
    for (int64_t i = 0; i < n_in; i += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(row + i);
      a0 = _mm512_dpbf16_ps(a0, wv, (__m512bh)_mm512_loadu_si512(x3 + i));
      a1 = _mm512_dpbf16_ps(a1, wv, (__m512bh)_mm512_loadu_si512(x3 + n_in + i));
      a2 = _mm512_dpbf16_ps(a2, wv, (__m512bh)_mm512_loadu_si512(x3 + 2 * n_in + i));
    }
    y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a2, a1), a0));
  }
}

void read_only(const uint16_t* w, float* y, int64_t n_out, int64_t n_in) {
  for (int64_t o = 0; o < n_out; ++o) {
    const uint16_t* row = w + o * n_in;
    __m512i a = _mm512_setzero_si512(), b = a;
    for (int64_t i = 0; i < n_in; i += 64) {
      a = _mm512_add_epi32(a, _mm512_loadu_si512(row + i));
      b = _mm512_add_epi32(b, _mm512_loadu_si512(row + i + 32));
    }
    y[o] = float(_mm512_reduce_add_epi32(_mm512_add_epi32(a, b)));
  }
}

uint16_t top_half(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return uint16_t(bits >> 16);
}
float from_top_half(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s OUT IN REPS VARIANT... (IN a multiple of 64)\n", argv[0]);
    return 1;
  }
  const int64_t n_out = std::atol(argv[1]), n_in = std::atol(argv[2]);
  const int reps = std::atoi(argv[3]);
  std::vector<uint16_t> w(n_out * n_in), xb(n_in), x3(3 * n_in);
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = uint16_t(0x3C00 | ((i * 2654435761u >> 20) & 0x83FF));
  std::vector<float> x(n_in), y(n_out);
  for (int64_t i = 0; i < n_in; ++i) {
    x[i] = float(i % 7) * 0.1f;
    xb[i] = top_half(x[i]);  // truncated: the experiment times, it does not round
    const float r1 = x[i] - from_top_half(xb[i]);
    const uint16_t mid = top_half(r1);
    x3[i] = xb[i], x3[n_in + i] = mid, x3[2 * n_in + i] = top_half(r1 - from_top_half(mid));
  }
  std::vector<std::string> variants(argv + 4, argv + argc);
  std::vector<std::vector<double>> times(variants.size());
  for (int r = 0; r < reps; ++r)
    for (size_t v = 0; v < variants.size(); ++v) {
      const std::string& name = variants[v];
      const auto start = std::chrono::steady_clock::now();
      if (name.rfind("row", 0) == 0) {
        one_row(w.data(), x.data(), y.data(), n_out, n_in, std::atol(name.c_str() + 3));
      } else if (name.rfind("tile", 0) == 0) {
        const int rows = name[4] - '0';
        const int64_t ahead = std::atol(name.c_str() + 6);
        if (rows == 2) tile<2>(w.data(), x.data(), y.data(), n_out, n_in, ahead);
        if (rows == 4) tile<4>(w.data(), x.data(), y.data(), n_out, n_in, ahead);
        if (rows == 8) tile<8>(w.data(), x.data(), y.data(), n_out, n_in, ahead);
      } else if (name == "ggml") {
        ggml_like(w.data(), xb.data(), y.data(), n_out, n_in);
      } else if (name == "split3") {
        split3(w.data(), x3.data(), y.data(), n_out, n_in);
      } else if (name == "read") {
        read_only(w.data(), y.data(), n_out, n_in);
      } else {
        std::fprintf(stderr, "unknown variant %s\n", name.c_str());
        return 1;
      }
      times[v].push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
    }
  std::printf("%ldx%ld, median us:", long(n_out), long(n_in));
  for (size_t v = 0; v < variants.size(); ++v) {
    std::sort(times[v].begin(), times[v].end());
    std::printf("  %s %.0f", variants[v].c_str(), times[v][times[v].size() / 2]);
  }
  std::printf("\n");
}
