// Standalone experiment behind docs/roofline.md "The sketch's limit": how much faster the
// one-token sketch product's inner loop (two hash rows of 4-bit codes, blocks of 32, the
// absmaxmin rule) gets when the selection is done on bytes and the weights are decoded to
// BF16 for `vdpbf16ps`, against the loop subbit runs today (fp32 lookups, `vrangeps`, FMA).
// Hashing is left out: both loops read the same precomputed bucket offsets. Not part of the
// build; results in dev/sketch-kernel-notes.md. Needs AVX512_BF16 and AVX512_VBMI (Zen 4/5,
// Sapphire Rapids).
//
//   g++ -O3 -march=native -o /tmp/sketch_bf16 dev/sketch_bf16_decode.cpp
//   /tmp/sketch_bf16 OUT IN ROUNDS [BUCKETS]   (default: 0.5 bits per weight)
//
// fp32: today's loop (src/ops/sketch_products-inl.h, OneBlockTwoRows), exact fp32 weights.
// bf16: per block and two output rows, the 64 bytes of codes (two rows x two hash rows x 16)
//       are split into nibbles, each hash row's codes mapped by `vpshufb` to their rank in the
//       32 values of both rows sorted by magnitude (ties to hash row 0), the two ranks' minimum
//       taken (absmaxmin reads the smaller magnitude), and the rank looked up by `vpermw` in a
//       32-entry BF16 table; x is rounded to BF16 and permuted once to the order the bytes land in.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kBlock = 32;        // weights per block
constexpr int kBucketBytes = 32;  // 32 codes and 32 negated codes, 4 bits each

uint16_t to_bf16(float f) {  // round to nearest even
  const uint32_t u = std::bit_cast<uint32_t>(f);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
float from_bf16(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

struct Problem {
  int64_t n_out, n_in, blocks;
  std::vector<uint8_t> table[2];   // each hash row's buckets
  std::vector<uint32_t> offset;    // (n_out, blocks, 2): byte offset of the block's 16 bytes
  float step[2];                   // value = signed nibble x step of the hash row
  std::vector<float> x;            // (n_in), blocked: block b at x + b * 32
};

// The code of element e (0..31) of a block in hash row k: nibble e % 2 of byte e / 2.
int code(const Problem& p, int64_t row, int64_t b, int k, int e) {
  const uint8_t byte = p.table[k][p.offset[(row * p.blocks + b) * 2 + k] + e / 2];
  return (e % 2 == 0) ? byte & 15 : byte >> 4;
}
float value(const Problem& p, int k, int c) { return float(c < 8 ? c : c - 16) * p.step[k]; }
float smaller_magnitude(float v0, float v1) { return std::fabs(v1) < std::fabs(v0) ? v1 : v0; }

// ---- today's loop: fp32 tables with the tie bits, vrangeps, FMA.
struct F32Tables {
  alignas(64) float lut[2][16];
};

F32Tables f32_tables(const Problem& p) {
  F32Tables t;
  for (int k = 0; k < 2; ++k)
    for (int c = 0; c < 16; ++c)
      t.lut[k][c] = std::bit_cast<float>(std::bit_cast<uint32_t>(value(p, k, c)) | uint32_t(k));
  return t;
}

__attribute__((noinline)) void f32_product(const Problem& p, const F32Tables& t, float* y) {
  const __m512 lut0 = _mm512_load_ps(t.lut[0]), lut1 = _mm512_load_ps(t.lut[1]);
  const __m512i shift =
      _mm512_slli_epi32(_mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                            12, 13, 14, 15),
                                          1),
                        2);
  const __m512i clear_ties = _mm512_set1_epi32(~3);
  const uint8_t* base0 = p.table[0].data();
  const uint8_t* base1 = p.table[1].data();
  auto decode = [&](const uint8_t* b0, const uint8_t* b1, int half) {
    uint64_t w0, w1;
    std::memcpy(&w0, b0 + half * 8, 8);
    std::memcpy(&w1, b1 + half * 8, 8);
    const __m512 e0 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(w0), shift), lut0);
    const __m512 e1 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(w1), shift), lut1);
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(_mm512_range_ps(e1, e0, 6)), clear_ties));
  };
  for (int64_t r = 0; r < p.n_out; r += 2) {
    const uint32_t* o0 = &p.offset[r * p.blocks * 2];
    const uint32_t* o1 = &p.offset[(r + 1) * p.blocks * 2];
    __m512 even0 = _mm512_setzero_ps(), odd0 = even0, even1 = even0, odd1 = even0;
    for (int64_t b = 0; b < p.blocks; ++b) {
      const __m512 x0 = _mm512_load_ps(&p.x[b * kBlock]);
      const __m512 x1 = _mm512_load_ps(&p.x[b * kBlock + 16]);
      const uint8_t *b00 = base0 + o0[2 * b], *b01 = base1 + o0[2 * b + 1];
      const uint8_t *b10 = base0 + o1[2 * b], *b11 = base1 + o1[2 * b + 1];
      even0 = _mm512_fmadd_ps(decode(b00, b01, 0), x0, even0);
      even1 = _mm512_fmadd_ps(decode(b10, b11, 0), x0, even1);
      odd0 = _mm512_fmadd_ps(decode(b00, b01, 1), x1, odd0);
      odd1 = _mm512_fmadd_ps(decode(b10, b11, 1), x1, odd1);
    }
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(even0, odd0));
    y[r + 1] = _mm512_reduce_add_ps(_mm512_add_ps(even1, odd1));
  }
}

// The element order of the shift-and-permute loop above: lane l of half h reads nibble
// ((l >> 1) << 2) / 4 of dword l % 2 of the half's 64-bit word.
int f32_element(int half, int lane) { return half * 16 + (lane % 2) * 8 + (lane >> 1); }

// ---- the byte-rank / BF16 loop.
struct Bf16Tables {
  alignas(64) uint8_t rank[64];    // [rank0, rank0, rank1, rank1]: code -> rank, 16 bytes each
  alignas(64) uint16_t value[32];  // rank -> bf16 value
  std::vector<uint16_t> x;         // (blocks, 2, 16): the even and odd words of each block
};

// Position p (0..63) of the 64 code bytes of a block pair: 128-bit lane p / 16 holds output row
// p / 32, low (lane 0, 2) or high (1, 3) nibbles; byte p % 16 of the 16 code bytes.
int bf16_element(int p) { return 2 * (p % 16) + (p / 16) % 2; }

Bf16Tables bf16_tables(const Problem& p) {
  Bf16Tables t;
  struct Entry {
    float magnitude;
    int k, c;
  };
  std::vector<Entry> all;
  for (int k = 0; k < 2; ++k)
    for (int c = 0; c < 16; ++c) all.push_back({std::fabs(value(p, k, c)), k, c});
  std::sort(all.begin(), all.end(), [](const Entry& a, const Entry& b) {
    return a.magnitude != b.magnitude ? a.magnitude < b.magnitude : a.k < b.k;
  });
  for (int r = 0; r < 32; ++r) {
    for (int copy = 0; copy < 2; ++copy) t.rank[all[r].k * 32 + copy * 16 + all[r].c] = uint8_t(r);
    t.value[r] = to_bf16(value(p, all[r].k, all[r].c));
  }
  t.x.resize(p.blocks * 32);
  for (int64_t b = 0; b < p.blocks; ++b)
    for (int w = 0; w < 16; ++w) {
      t.x[b * 32 + w] = to_bf16(p.x[b * kBlock + bf16_element(2 * w)]);
      t.x[b * 32 + 16 + w] = to_bf16(p.x[b * kBlock + bf16_element(2 * w + 1)]);
    }
  return t;
}

__attribute__((noinline)) void bf16_product(const Problem& p, const Bf16Tables& t, float* y) {
  const __m512i rank = _mm512_load_si512(t.rank);
  const __m512i values = _mm512_load_si512(t.value);
  const __m512i low_nibble = _mm512_set1_epi8(15);
  const uint8_t* base0 = p.table[0].data();
  const uint8_t* base1 = p.table[1].data();
  // Ranks of one output row's block: lanes [low nibbles row 0, high row 0, low row 1, high row 1].
  auto ranks = [&](const uint32_t* o) {
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(base0 + o[0])));
    v = _mm512_mask_broadcast_i32x4(v, 0xFF00,
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(base1 + o[1])));
    v = _mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4);
    return _mm512_shuffle_epi8(rank, _mm512_and_si512(v, low_nibble));
  };
  for (int64_t r = 0; r < p.n_out; r += 2) {
    const uint32_t* o0 = &p.offset[r * p.blocks * 2];
    const uint32_t* o1 = &p.offset[(r + 1) * p.blocks * 2];
    // Even and odd blocks into their own accumulators (blocks is even: IN is a multiple of 64).
    __m512 even_e = _mm512_setzero_ps(), even_o = even_e, odd_e = even_e, odd_o = even_e;
    auto block = [&](int64_t b, __m512& a_even, __m512& a_odd) {
      const __m512i r0 = ranks(o0 + 2 * b), r1 = ranks(o1 + 2 * b);
      // Hash row 0's ranks of both output rows against hash row 1's: the smaller rank wins.
      const __m512i m = _mm512_min_epu8(_mm512_shuffle_i64x2(r0, r1, 0x44),
                                        _mm512_shuffle_i64x2(r0, r1, 0xEE));
      const __m512i w_even = _mm512_permutexvar_epi16(m, values);
      const __m512i w_odd = _mm512_permutexvar_epi16(_mm512_srli_epi16(m, 8), values);
      const __m512i x_even = _mm512_broadcast_i64x4(
          _mm256_load_si256(reinterpret_cast<const __m256i*>(&t.x[b * 32])));
      const __m512i x_odd = _mm512_broadcast_i64x4(
          _mm256_load_si256(reinterpret_cast<const __m256i*>(&t.x[b * 32 + 16])));
      a_even = _mm512_dpbf16_ps(a_even, (__m512bh)w_even, (__m512bh)x_even);
      a_odd = _mm512_dpbf16_ps(a_odd, (__m512bh)w_odd, (__m512bh)x_odd);
    };
    for (int64_t b = 0; b < p.blocks; b += 2) {
      block(b, even_e, even_o);
      block(b + 1, odd_e, odd_o);
    }
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(even_e, even_o), _mm512_add_ps(odd_e, odd_o));
    y[r] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0x00FF, sum));
    y[r + 1] = _mm512_reduce_add_ps(_mm512_maskz_mov_ps(0xFF00, sum));
  }
}

// ---- references (double sums): exact fp32 weights, and BF16 weights times BF16 x.
void references(const Problem& p, std::vector<double>& exact, std::vector<double>& rounded) {
  exact.assign(p.n_out, 0.0);
  rounded.assign(p.n_out, 0.0);
  for (int64_t r = 0; r < p.n_out; ++r)
    for (int64_t b = 0; b < p.blocks; ++b)
      for (int e = 0; e < kBlock; ++e) {
        const float w = smaller_magnitude(value(p, 0, code(p, r, b, 0, e)), value(p, 1, code(p, r, b, 1, e)));
        const float xv = p.x[b * kBlock + e];
        exact[r] += double(w) * xv;
        rounded[r] += double(from_bf16(to_bf16(w))) * from_bf16(to_bf16(xv));
      }
}

// Largest |got - want| over rows, relative to the largest |want|.
double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return worst / scale;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s OUT IN ROUNDS [BUCKETS]\n", argv[0]);
    return 2;
  }
  Problem p;
  p.n_out = std::atoll(argv[1]) & ~int64_t{1};
  p.n_in = std::atoll(argv[2]) / (2 * kBlock) * (2 * kBlock);
  const int rounds = std::atoi(argv[3]);
  p.blocks = p.n_in / kBlock;
  // 0.5 bits per weight over two hash rows, as subbit's default sketch.
  const int64_t buckets = argc == 5 ? std::atoll(argv[4])
                                    : std::max<int64_t>(1, p.n_out * p.n_in / 16 / 2 / kBucketBytes);
  std::mt19937 rng(7);
  for (auto& t : p.table) {
    t.resize(buckets * kBucketBytes);
    for (auto& byte : t) byte = uint8_t(rng());
  }
  p.step[0] = 0.0123f;
  p.step[1] = 0.0117f;
  p.offset.resize(p.n_out * p.blocks * 2);
  for (auto& o : p.offset) o = uint32_t(rng() % buckets) * kBucketBytes + (rng() % 2) * 16;
  std::normal_distribution<float> normal;
  p.x.resize(p.n_in);
  for (auto& v : p.x) v = normal(rng);

  // Today's loop reads element f32_element(h, l) of each block where the reference reads e:
  // permute x the other way so that both compute the same product.
  std::vector<float> x_f32(p.n_in);
  for (int64_t b = 0; b < p.blocks; ++b)
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 16; ++l) x_f32[b * kBlock + h * 16 + l] = p.x[b * kBlock + f32_element(h, l)];
  Problem p_f32 = p;
  p_f32.x = x_f32;
  // ... and its codes: element f32_element(h, l) is nibble ((l >> 1) << 2) / 4 of dword l % 2,
  // which the reference's code() numbers (l % 2) * 8 + (l >> 1) within the half: the same.

  const F32Tables ft = f32_tables(p_f32);
  const Bf16Tables bt = bf16_tables(p);
  std::vector<double> exact, rounded;
  references(p, exact, rounded);
  std::vector<float> y_f32(p.n_out), y_bf16(p.n_out);
  f32_product(p_f32, ft, y_f32.data());
  bf16_product(p, bt, y_bf16.data());
  std::printf("%lld x %lld, %lld buckets per hash row\n", (long long)p.n_out, (long long)p.n_in,
              (long long)buckets);
  std::printf("fp32 loop vs exact reference: max relative error %.2e\n", relative_error(y_f32, exact));
  std::printf("bf16 loop vs bf16 reference:  max relative error %.2e\n", relative_error(y_bf16, rounded));
  std::printf("bf16 loop vs exact reference: max relative error %.2e\n", relative_error(y_bf16, exact));

  std::vector<double> t_f32, t_bf16;
  for (int round = 0; round < rounds; ++round) {
    for (int variant = 0; variant < 2; ++variant) {
      const auto start = std::chrono::steady_clock::now();
      if (variant == 0)
        f32_product(p_f32, ft, y_f32.data());
      else
        bf16_product(p, bt, y_bf16.data());
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      (variant == 0 ? t_f32 : t_bf16).push_back(us);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("fp32 loop %.1f us, bf16 loop %.1f us (medians of %d rounds): %.2fx\n",
              median(t_f32), median(t_bf16), rounds, median(t_f32) / median(t_bf16));
  return 0;
}
