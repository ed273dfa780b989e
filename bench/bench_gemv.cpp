// GEMV (one token) benchmarks: dense BF16 / F32 against the LittleBit factorised product at
// 0.1, 0.55 and 1.0 bits/weight, against a plain 1-bit sign matrix and against the UltraSketch
// hashed tables (docs/ultrasketch.md) at 1.0, 0.55, 0.5, 0.3 and 0.1 bits/weight, for
// Llama-sized shapes (Llama-2-7B's, a 70B-class MLP, Llama-3.2-1B's with its head).
//
// Run (Release build):
//   OMP_NUM_THREADS=1 build/subbit_bench --benchmark_filter=gemv/
//   OMP_NUM_THREADS=2 build/subbit_bench --benchmark_filter='gemv/4096x4096'
// Add --benchmark_format=json (or --benchmark_out=gemv.json) to post-process.
//
// Reading the results: every benchmark is one y = W·x for one shape (n_out x n_in). The speed-up
// of a format is time(gemv/<shape>/dense_bf16) / time(gemv/<shape>/<format>) for the same shape
// and thread count. `weight_MB` is what the format stores for the layer (signs and scale vectors),
// `bytes_per_second` that amount divided by the time, `bpw` the bits per weight actually stored
// (the rank is rounded down to a multiple of 8, so it is at most the nominal one in the name).
// Dense BF16 GEMV is bound by memory bandwidth; the sign products read 16-32x fewer bytes and are
// bound by compute once their bits sit in cache, so the ratio depends on the machine's
// bandwidth/compute balance. Threads share the machine with anything else running: on a busy
// machine, waking the OpenMP team can cost milliseconds, so measure on an idle one.
//
// Sketch vs dense: time(gemv/<shape>/dense_bf16) / time(gemv/<shape>/sketch_bpw0.50); sketch vs
// LittleBit at the same budget: time(littlebit_bpw0.55_r*) / time(sketch_bpw0.55) (likewise 0.10
// and 1.00). The sketch layers use sketch_params_for_bpw's defaults (absmaxmin, 2 hash rows,
// block 32, 4-bit values, no salient set, row bands of kSketchBandBuckets, hash version 2);
// `_one_band` is the same layer with plain hashing over whole tables (no row bands), `_hash_v1`
// (0.50 bpw only) with version 1's 64-bit hash (files written before version 2), `_block16`
// (0.50 bpw only) with blocks of 16 weights (files written before block 32), `_fp32` (0.50 bpw
// only) the default layer with the BF16 one-token products switched off (exact fp32, as on CPUs
// without AVX512_BF16; ops/sketch_matmul.h). Their tables are
// filled directly with random codes and fp16 steps instead of running SketchLinear::encode on a
// random matrix: encode would need the whole fp32 matrix (940 MB at 28672x8192) and seconds per
// layer, and the kernel's speed does not depend on the values (it is branch-free; only the table
// sizes and hashes matter, and those are the real ones). `table_MB` is the tables' size in memory
// at run time (SketchLinear:: runtime_bytes: a byte per weight of code, twice the stored 4 bits),
// which is what decides whether the random bucket loads hit the caches.
//
// Memory: one shape's data is alive at a time (the 128256x2048 F32 matrix is 1.05 GB, BF16
// 525 MB), allocated when its first benchmark runs and filled with cheap pseudo-random data.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "formats/littlebit.h"
#include "formats/sign.h"
#include "formats/sketch.h"
#include "ops/dense_matmul.h"
#include "ops/parallel.h"
#include "ops/sign_matmul.h"
#include "ops/sketch_matmul.h"

namespace subbit {
namespace {

struct Shape {
  int64_t n_out, n_in;
};
// Llama-2-7B's attention and MLP, a 70B-class MLP, then Llama-3.2-1B's attention, MLP and head.
constexpr Shape kShapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {28672, 8192},
                             {2048, 2048}, {8192, 2048},  {2048, 8192},  {128256, 2048}};
constexpr double kLittleBitBpw[] = {0.1, 0.55, 1.0};
constexpr double kSketchBpw[] = {1.0, 0.55, 0.5, 0.3, 0.1};

std::string bpw_name(double bpw) { return std::to_string(bpw).substr(0, 4); }

std::string shape_name(const Shape& s) {
  return std::to_string(s.n_out) + "x" + std::to_string(s.n_in);
}

// "littlebit_bpw0.55_r544": nominal bits per weight and the rank they give (two paths, ranks in
// multiples of 8, littlebit_rank_for_bpw).
std::string littlebit_name(const Shape& s, int bpw_index) {
  const double bpw = kLittleBitBpw[bpw_index];
  return "littlebit_bpw" + bpw_name(bpw) + "_r" +
         std::to_string(littlebit_rank_for_bpw(s.n_in, s.n_out, bpw, 2));
}

// splitmix64: fast enough to fill a gigabyte in about a second.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

std::vector<float> random_floats(int64_t n, Rng& rng) {
  std::vector<float> v(n);
  for (auto& x : v) x = rng.uniform();
  return v;
}

// Random signs with the padding bits cleared, as pack_signs would leave them.
std::vector<uint64_t> random_signs(int64_t rows, int64_t cols, Rng& rng) {
  const int64_t wpr = sign_words_per_row(cols);
  std::vector<uint64_t> words(rows * wpr);
  for (auto& w : words) w = rng.next();
  if (cols % 64)
    for (int64_t r = 0; r < rows; ++r) words[r * wpr + wpr - 1] &= (uint64_t{1} << (cols % 64)) - 1;
  return words;
}

// The default layer (row bands, hash version 2, block 32), plain hashing, the version-1 hash,
// block 16 (the default before block 32, which older files have), or the default layer with the
// BF16 one-token products switched off.
enum SketchVariant { kBanded, kOneBand, kHashV1, kBlock16, kFp32 };
constexpr const char* kSketchVariantSuffix[] = {"", "_one_band", "_hash_v1", "_block16", "_fp32"};

// Everything one shape needs; only one shape is alive at a time.
struct ShapeData {
  Shape shape;
  std::vector<float> x;
  std::vector<uint16_t> dense_bf16;
  std::vector<float> dense_f32;
  std::vector<std::unique_ptr<LittleBitLinear>> littlebit;  // one per kLittleBitBpw
  std::unique_ptr<SignLinear> sign_1bit;
  // Built by the sketch benchmarks, per SketchVariant and kSketchBpw.
  std::unique_ptr<SketchLinear> sketch[std::size(kSketchVariantSuffix)][std::size(kSketchBpw)];
  // Work buffers.
  std::vector<float> y;
};

ShapeData& data_for(int shape_index) {
  static std::unique_ptr<ShapeData> current;
  static int current_index = -1;
  if (current_index != shape_index) {
    current.reset();  // free the previous shape first
    current = std::make_unique<ShapeData>();
    current_index = shape_index;
    ShapeData& d = *current;
    d.shape = kShapes[shape_index];
    const int64_t n_out = d.shape.n_out, n_in = d.shape.n_in;
    Rng rng{uint64_t(shape_index) + 1};
    d.x = random_floats(n_in, rng);
    d.y.resize(n_out);
    for (double bpw : kLittleBitBpw) {
      const int64_t rank = littlebit_rank_for_bpw(n_in, n_out, bpw, 2);
      std::vector<LittleBitPath> paths(2);
      for (LittleBitPath& p : paths) {
        p.rank = rank;
        p.vt_signs = random_signs(rank, n_in, rng);
        p.u_signs = random_signs(n_out, rank, rng);
        p.g = random_floats(n_in, rng);
        p.l = random_floats(rank, rng);
        p.h = random_floats(n_out, rng);
      }
      d.littlebit.push_back(std::make_unique<LittleBitLinear>(n_out, n_in, std::move(paths)));
    }
    d.sign_1bit = std::make_unique<SignLinear>(n_out, n_in, random_signs(n_out, n_in, rng),
                                               random_floats(n_out, rng), random_floats(n_in, rng));
  }
  return *current;
}

// The dense matrices are only built by the dense benchmarks.
void ensure_dense(ShapeData& d, DType dtype) {
  const int64_t n = d.shape.n_out * d.shape.n_in;
  Rng rng{0x5eed + uint64_t(n)};
  if (dtype == DType::BF16 && d.dense_bf16.empty()) {
    d.dense_bf16.resize(n);
    // Random sign and mantissa, exponent 120..127: finite values in (-1, 1).
    for (int64_t i = 0; i < n; i += 4) {
      const uint64_t r = rng.next();
      for (int64_t k = 0; k < 4 && i + k < n; ++k)
        d.dense_bf16[i + k] = uint16_t(((r >> (16 * k)) & 0x83FF) | 0x3C00);
    }
  }
  if (dtype == DType::F32 && d.dense_f32.empty()) {
    d.dense_f32.resize(n);
    for (auto& w : d.dense_f32) w = rng.uniform();
  }
}

void set_common_counters(benchmark::State& state, const ShapeData& d, double weight_bytes) {
  state.counters["weight_MB"] = weight_bytes / 1e6;
  state.counters["bpw"] = weight_bytes * 8.0 / double(d.shape.n_out * d.shape.n_in);
  state.counters["threads"] = num_threads();
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(weight_bytes));
}

// n tokens at once: 1 is generation; 8 a batch of decoding streams; 512 a prompt chunk.
void BM_Dense(benchmark::State& state, int shape_index, DType dtype, int64_t tokens) {
  ShapeData& d = data_for(shape_index);
  ensure_dense(d, dtype);
  const DenseMatrix w{dtype,
                      dtype == DType::BF16 ? static_cast<const void*>(d.dense_bf16.data())
                                           : static_cast<const void*>(d.dense_f32.data()),
                      d.shape.n_out, d.shape.n_in};
  std::vector<float> x_batch, y_batch;
  if (tokens > 1) {
    Rng rng{uint64_t(tokens)};
    x_batch = random_floats(tokens * d.shape.n_in, rng);
    y_batch.resize(size_t(tokens * d.shape.n_out));
  }
  const float* x = tokens > 1 ? x_batch.data() : d.x.data();
  float* y = tokens > 1 ? y_batch.data() : d.y.data();
  for (auto _ : state) {
    dense_matmul(w, x, y, tokens);
    benchmark::DoNotOptimize(y);
    benchmark::ClobberMemory();
  }
  state.SetLabel(shape_name(d.shape) + " dense " + std::string(dtype_name(dtype)));
  set_common_counters(state, d, double(d.shape.n_out * d.shape.n_in) * double(dtype_size(dtype)));
  state.counters["tokens"] = double(tokens);
  state.counters["GFLOPS"] =
      benchmark::Counter(double(state.iterations()) * 2.0 * double(d.shape.n_out * d.shape.n_in) *
                             double(tokens) / 1e9,
                         benchmark::Counter::kIsRate);
}

// The format's own product (LittleBitLinear::forward): y = Σ_paths h ⊙ sign(U)·(l ⊙ sign(V)ᵀ·(g ⊙
// x)).
void BM_LittleBit(benchmark::State& state, int shape_index, int bpw_index, int64_t tokens) {
  ShapeData& d = data_for(shape_index);
  const LittleBitLinear& layer = *d.littlebit[bpw_index];
  Rng rng{uint64_t(tokens) + 7};
  const std::vector<float> x = tokens > 1 ? random_floats(tokens * d.shape.n_in, rng) : d.x;
  std::vector<float> y(size_t(tokens * d.shape.n_out));
  Scratch scratch;
  for (auto _ : state) {
    layer.forward(x.data(), y.data(), tokens, scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const int64_t rank = layer.paths()[0].rank;
  state.SetLabel(shape_name(d.shape) +
                 " littlebit nominal_bpw=" + std::to_string(kLittleBitBpw[bpw_index]).substr(0, 4) +
                 " rank=" + std::to_string(rank));
  state.counters["rank"] = double(rank);
  state.counters["tokens"] = double(tokens);
  // Signs are 1 bit; g, l, h stored as fp16 (the formula's 16 and 32 terms).
  set_common_counters(state, d, double(layer.storage_bits()) / 8.0);
}

// The format's own product (SignLinear::forward): y = row_scale ⊙ sign(W)·(col_scale ⊙ x).
void BM_Sign1Bit(benchmark::State& state, int shape_index) {
  ShapeData& d = data_for(shape_index);
  Scratch scratch;
  for (auto _ : state) {
    d.sign_1bit->forward(d.x.data(), d.y.data(), 1, scratch);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(shape_name(d.shape) + " sign 1-bit");
  set_common_counters(state, d, double(d.sign_1bit->storage_bits()) / 8.0);
}

// A sketch layer with sketch_params_for_bpw's sizes and random 4-bit codes (see the top comment).
std::unique_ptr<SketchLinear> random_sketch(const Shape& shape, double bpw, SketchVariant variant,
                                            uint64_t seed) {
  SketchParams p = sketch_params_for_bpw(shape.n_out, shape.n_in, bpw, 2,
                                         variant == kBlock16 ? 16 : kSketchDefaultBlock, 4, 0.0,
                                         variant == kOneBand ? 0 : kSketchBandBuckets);
  if (variant == kHashV1) p.hash_version = 1;
  Rng rng{seed};
  const int q_max = (1 << (p.value_bits - 1)) - 1;
  SketchTableSet set;
  set.buckets = p.buckets;
  for (int k = 0; k < p.rows; ++k) {
    set.seeds.push_back(rng.next());
    const float scale = f16_to_f32(f32_to_f16(0.01f * float(k + 1)));
    set.scales.push_back(scale);
    std::vector<int16_t> codes(p.buckets[k] * p.block);
    for (int16_t& code : codes) code = int16_t(int(rng.next() % uint64_t(2 * q_max + 1)) - q_max);
    set.codes.push_back(std::move(codes));
  }
  set.value_bits = p.value_bits;
  return std::make_unique<SketchLinear>(shape.n_out, shape.n_in, p.rule, p.block, p.band_rows,
                                        p.hash_version, std::vector<SketchTableSet>{std::move(set)},
                                        std::vector<uint64_t>{});
}

void BM_Sketch(benchmark::State& state, int shape_index, int bpw_index, SketchVariant variant) {
  ShapeData& d = data_for(shape_index);
  auto& layer = d.sketch[variant][bpw_index];
  if (!layer)
    layer = random_sketch(d.shape, kSketchBpw[bpw_index], variant, 0x5ce7c4 + uint64_t(bpw_index));
  const bool bf16_before = set_sketch_bf16_products(false);
  if (variant != kFp32) set_sketch_bf16_products(bf16_before);
  Scratch scratch;
  for (auto _ : state) {
    layer->forward(d.x.data(), d.y.data(), 1, scratch);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["bf16"] = sketch_bf16_products() ? 1 : 0;
  set_sketch_bf16_products(bf16_before);
  state.SetLabel(shape_name(d.shape) + " sketch nominal_bpw=" + bpw_name(kSketchBpw[bpw_index]) +
                 " " + layer->describe());
  set_common_counters(state, d, double(layer->storage_bits()) / 8.0);
  state.counters["table_MB"] = double(layer->runtime_bytes()) / 1e6;  // what the kernel reads from
}

// Registered shape by shape so each shape's data is built once.
[[maybe_unused]] const bool gemv_benchmarks_registered = [] {
  for (int si = 0; si < int(std::size(kShapes)); ++si) {
    const std::string prefix = "gemv/" + shape_name(kShapes[si]) + "/";
    benchmark::RegisterBenchmark((prefix + "dense_bf16").c_str(), BM_Dense, si, DType::BF16, 1)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((prefix + "dense_f32").c_str(), BM_Dense, si, DType::F32, 1)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    for (int bi = 0; bi < int(std::size(kLittleBitBpw)); ++bi)
      benchmark::RegisterBenchmark((prefix + littlebit_name(kShapes[si], bi)).c_str(), BM_LittleBit,
                                   si, bi, 1)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    benchmark::RegisterBenchmark((prefix + "sign_1bit").c_str(), BM_Sign1Bit, si)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    for (int bi = 0; bi < int(std::size(kSketchBpw)); ++bi)
      for (SketchVariant variant : {kBanded, kOneBand, kHashV1, kBlock16, kFp32}) {
        if (variant != kBanded && variant != kOneBand && kSketchBpw[bi] != 0.5) continue;
        benchmark::RegisterBenchmark(
            (prefix + "sketch_bpw" + bpw_name(kSketchBpw[bi]) + kSketchVariantSuffix[variant])
                .c_str(),
            BM_Sketch, si, bi, variant)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
  }
  // Several tokens per product (ggml's MUL_MAT with n = 8 and 512): batched decoding, prompts.
  for (int si = 0; si < int(std::size(kShapes)); ++si)
    for (int64_t tokens : {8, 512}) {
      const std::string prefix =
          "gemm/" + shape_name(kShapes[si]) + "/n" + std::to_string(tokens) + "/";
      benchmark::RegisterBenchmark((prefix + "dense_bf16").c_str(), BM_Dense, si, DType::BF16,
                                   tokens)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      for (int bi = 0; bi < int(std::size(kLittleBitBpw)); ++bi)
        benchmark::RegisterBenchmark((prefix + littlebit_name(kShapes[si], bi)).c_str(),
                                     BM_LittleBit, si, bi, tokens)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
    }
  return true;
}();

}  // namespace
}  // namespace subbit

BENCHMARK_MAIN();
