// The machine's two roofs, measured with the threads the kernels use (OMP_NUM_THREADS), so that
// each GEMV can be placed against them (docs/roofline.md):
//   roofline/read       sum of a 1 GiB array: the streaming read bandwidth a GEMV can get
//   roofline/read_32MiB the same from a 32 MiB array, which stays in the last-level cache when it
//                       is large enough (a 4096x4096 BF16 matrix is 32 MiB)
//   roofline/triad      STREAM's a = b + s·c on 3 x 512 MiB (counted as STREAM does: 3 arrays)
//   roofline/fma_f32    independent fp32 FMAs on AVX-512 registers: peak fp32 FLOP/s
//   roofline/dpbf16     independent AVX512_BF16 dot products: peak bf16 FLOP/s (2 per product)
// The arrays are far larger than the last-level cache, so read/triad measure DRAM. Run:
//   OMP_NUM_THREADS=1 build/subbit_bench --benchmark_filter=roofline/
//   OMP_NUM_THREADS=2 build/subbit_bench --benchmark_filter=roofline/
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ops/parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 reductions initialise their "undefined" temporaries from themselves.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace subbit {
namespace {

constexpr int64_t kReadFloats = int64_t{1} << 28;   // 1 GiB
constexpr int64_t kTriadFloats = int64_t{1} << 27;  // 512 MiB per array
constexpr int64_t kCacheFloats = int64_t{1} << 23;  // 32 MiB: in the last-level cache

std::vector<float>& array(int which, int64_t n) {
  static std::vector<float> arrays[3];
  if (int64_t(arrays[which].size()) != n) {
    arrays[which].assign(size_t(n), 0.0f);
    parallel_for(n, 1 << 20, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) arrays[which][i] = float(i % 1000) * 1e-3f;
    });
  }
  return arrays[which];
}

void BM_Read(benchmark::State& state, int64_t floats) {
  // Summed as integers: integer addition is associative, so the compiler vectorises the loop
  // (a float sum would be one latency-bound chain of adds, far below the memory's speed).
  const auto* a = reinterpret_cast<const uint32_t*>(array(0, floats).data());
  for (auto _ : state) {
    uint32_t total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t i = 0; i < floats; ++i) total += a[i];
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * floats * 4);
  state.counters["threads"] = num_threads();
}

void BM_Triad(benchmark::State& state) {
  std::vector<float>& a = array(0, kTriadFloats);
  const std::vector<float>& b = array(1, kTriadFloats);
  const std::vector<float>& c = array(2, kTriadFloats);
  const float s = 3.0f;
  for (auto _ : state) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kTriadFloats; ++i) a[i] = b[i] + s * c[i];
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kTriadFloats * 4 * 3);
  state.counters["threads"] = num_threads();
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
constexpr int64_t kComputeSteps = 1 << 22;
constexpr int kChains = 16;  // independent accumulators: enough to cover the latency

__attribute__((target("avx512f"))) float fma_chains(float seed) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(seed * float(k));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (int64_t s = 0; s < kComputeSteps; ++s)
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
  __m512 total = acc[0];
  for (int k = 1; k < kChains; ++k) total = _mm512_add_ps(total, acc[k]);
  return _mm512_reduce_add_ps(total);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) float dpbf16_chains(float seed) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(seed * float(k));
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
  for (int64_t s = 0; s < kComputeSteps; ++s)
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
  __m512 total = acc[0];
  for (int k = 1; k < kChains; ++k) total = _mm512_add_ps(total, acc[k]);
  return _mm512_reduce_add_ps(total);
}

// flops_per_instruction: 16 lanes x FMA (2) = 32; 32 bf16 pairs x (multiply + add) = 64.
template <float (*kLoop)(float)>
void BM_Compute(benchmark::State& state, bool supported, double flops_per_instruction) {
  if (!supported) {
    state.SkipWithError("this CPU lacks the instructions");
    return;
  }
  for (auto _ : state) {
    float total = 0;
#pragma omp parallel reduction(+ : total)
    total += kLoop(1e-6f);
    benchmark::DoNotOptimize(total);
  }
  const double instructions = double(kComputeSteps) * kChains * num_threads();
  state.counters["GFLOPS"] =
      benchmark::Counter(double(state.iterations()) * instructions * flops_per_instruction / 1e9,
                         benchmark::Counter::kIsRate);
  state.counters["threads"] = num_threads();
}
#endif

[[maybe_unused]] const bool roofline_benchmarks_registered = [] {
  benchmark::RegisterBenchmark("roofline/read", BM_Read, kReadFloats)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("roofline/read_32MiB", BM_Read, kCacheFloats)
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("roofline/triad", BM_Triad)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  benchmark::RegisterBenchmark("roofline/fma_f32", BM_Compute<fma_chains>,
                               __builtin_cpu_supports("avx512f") != 0, 32.0)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("roofline/dpbf16", BM_Compute<dpbf16_chains>,
                               __builtin_cpu_supports("avx512bf16") != 0, 64.0)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
#endif
  return true;
}();

}  // namespace
}  // namespace subbit
