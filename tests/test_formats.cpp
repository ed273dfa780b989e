// The RTN and sign baselines against scalar references written here: the codes and their bit
// layout, the decoded weights, the product, and the round trip through a model file.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/tensor_io.h"
#include "io/gguf.h"
#include "ops/dense_matmul.h"
#include "ops/parallel.h"
#include "ops/sign_matmul.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::dequantized;

using testing::random_vector;

float to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// x · Ŵᵀ in double, from the decoded weights.
std::vector<double> product(const std::vector<float>& w, const std::vector<float>& x, int64_t d_out,
                            int64_t d_in, int64_t tokens) {
  std::vector<double> y(tokens * d_out, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t o = 0; o < d_out; ++o)
      for (int64_t i = 0; i < d_in; ++i)
        y[t * d_out + o] += double(w[o * d_in + i]) * x[t * d_in + i];
  return y;
}

void expect_forward_matches_product(const Linear& layer, const std::vector<float>& w_hat,
                                    uint32_t seed, const std::string& what) {
  const int64_t d_out = layer.n_out(), d_in = layer.n_in();
  std::mt19937 rng(seed);
  // A format must not read its temporaries before writing them: start from NaN-filled scratch,
  // reused across calls as a RunState reuses it.
  Scratch scratch;
  for (int i = 0; i < Scratch::kBuffers; ++i) {
    float* buffer = scratch.floats(i, 5 * (d_in + d_out) * 4);
    std::fill(buffer, buffer + 5 * (d_in + d_out) * 4, std::nanf(""));
  }
  for (int64_t tokens : {1, 3, 5}) {
    const auto x = random_vector(tokens * d_in, rng);
    std::vector<float> y(tokens * d_out);
    layer.forward(x.data(), y.data(), tokens, scratch);
    const auto expected = product(w_hat, x, d_out, d_in, tokens);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t o = 0; o < d_out; ++o) {
        double magnitude = 0;  // Σ|ŵ·x|: fp32 sums in any order stay within a few ulps of it
        for (int64_t i = 0; i < d_in; ++i)
          magnitude += std::fabs(double(w_hat[o * d_in + i]) * x[t * d_in + i]);
        ASSERT_NEAR(y[t * d_out + o], expected[t * d_out + o], 1e-5 * magnitude + 1e-6)
            << what << " token " << t << " output " << o;
      }
  }
}

std::filesystem::path write_layer(const Linear& layer, const std::string& tag) {
  const auto path = testing::temp_dir(tag) / "layer.gguf";
  GgufWriter out;
  layer.save(out, "blk.0.attn_q");
  out.write(path);
  return path;
}

void expect_identical_outputs(const Linear& a, const Linear& b, const std::string& what) {
  std::mt19937 rng(11);
  for (int64_t tokens : {1, 4}) {
    const auto x = random_vector(tokens * a.n_in(), rng);
    std::vector<float> ya(tokens * a.n_out()), yb(tokens * b.n_out());
    Scratch scratch;
    a.forward(x.data(), ya.data(), tokens, scratch);
    b.forward(x.data(), yb.data(), tokens, scratch);
    EXPECT_EQ(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)), 0)
        << what << " tokens " << tokens;
  }
  EXPECT_EQ(dequantized(a), dequantized(b)) << what;
}

// ---------------------------------------------------------------------------------------------
// RTN: per group of 128 weights of a row, min and scale in fp16, codes q = round((w - min) / scale)
// clamped to 0..2^bits-1, packed LSB first into a bitstream per row that starts on a new word.

struct RtnReference {
  std::vector<int64_t> codes;         // (d_out, d_in)
  std::vector<float> minimum, scale;  // (d_out, groups)
  std::vector<float> weights;         // (d_out, d_in) decoded
};

RtnReference rtn_reference(const std::vector<float>& w, int64_t d_out, int64_t d_in, int bits) {
  const int64_t group = 128, groups = (d_in + group - 1) / group, levels = (int64_t{1} << bits) - 1;
  RtnReference r;
  r.codes.resize(d_out * d_in);
  r.weights.resize(d_out * d_in);
  for (int64_t o = 0; o < d_out; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      float lo = w[o * d_in + g * group], hi = lo;
      for (int64_t i = g * group; i < std::min(d_in, (g + 1) * group); ++i) {
        lo = std::min(lo, w[o * d_in + i]);
        hi = std::max(hi, w[o * d_in + i]);
      }
      const float minimum = to_f16(lo);
      const float scale = to_f16(std::max((hi - minimum) / float(levels), 0x1p-24f));
      r.minimum.push_back(minimum);
      r.scale.push_back(scale);
      for (int64_t i = g * group; i < std::min(d_in, (g + 1) * group); ++i) {
        const double q = std::nearbyint((double(w[o * d_in + i]) - minimum) / scale);
        r.codes[o * d_in + i] = std::clamp<int64_t>(int64_t(q), 0, levels);
        r.weights[o * d_in + i] = minimum + float(r.codes[o * d_in + i]) * scale;
      }
    }
  return r;
}

class RtnShapes : public ::testing::TestWithParam<std::tuple<int, int64_t>> {};

TEST_P(RtnShapes, EncodeDecodeAndProductMatchTheReference) {
  const auto [bits, d_in] = GetParam();
  const int64_t d_out = 5;
  std::mt19937 rng(uint32_t(100 * bits + d_in));
  auto w = random_vector(d_out * d_in, rng);
  // A constant group (zero range) decodes to its value exactly.
  for (int64_t i = 0; i < std::min<int64_t>(d_in, 128); ++i) w[2 * d_in + i] = 0.375f;
  const auto layer = RtnLinear::encode(w.data(), d_out, d_in, bits);
  const RtnReference ref = rtn_reference(w, d_out, d_in, bits);
  const auto w_hat = dequantized(*layer);
  const std::string what = std::to_string(bits) + "-bit, d_in " + std::to_string(d_in);
  const int64_t groups = (d_in + 127) / 128;
  const double levels = double((1 << bits) - 1);
  for (int64_t o = 0; o < d_out; ++o)
    for (int64_t i = 0; i < d_in; ++i) {
      const int64_t at = o * d_in + i, g = o * groups + i / 128;
      const double scale = ref.scale[g], minimum = ref.minimum[g];
      // The codes may differ from the reference only where (w - min) / scale sits on a rounding
      // tie within float error (the encoder divides in float).
      const double quotient = (double(w[at]) - minimum) / scale;
      const bool near_tie = std::fabs(quotient - std::floor(quotient) - 0.5) < 1e-4;
      if (!near_tie) {
        ASSERT_NEAR(w_hat[at], ref.weights[at], 2e-7 * (std::fabs(minimum) + levels * scale))
            << what << " row " << o << " column " << i << " code " << ref.codes[at];
      }
      // Rounding error: half a step inside the range; at its ends, what rounding min down or
      // the scale to fp16 (2^-11 relative) leaves uncovered.
      const double bound =
          0.5 * scale + levels * scale * 0x1p-10 + std::fabs(minimum) * 0x1p-11 + 1e-7;
      ASSERT_LE(std::fabs(double(w_hat[at]) - w[at]), bound)
          << what << " row " << o << " column " << i;
    }
  for (int64_t i = 0; i < std::min<int64_t>(d_in, 128); ++i) EXPECT_EQ(w_hat[2 * d_in + i], 0.375f);
  expect_forward_matches_product(*layer, w_hat, 7, what);
  const int64_t words = (d_in * bits + 63) / 64;
  EXPECT_EQ(layer->storage_bits(), d_out * (words * 64 + groups * 32)) << what;
}

// Every width: 3, 5, 6 and 7-bit codes cross 64-bit words (3-bit code 21 occupies bits 63..65);
// 127/129/300 columns leave a partial last group; 1 and 64 columns are the smallest row and an
// exact word of 4-bit codes.
INSTANTIATE_TEST_SUITE_P(Awkward, RtnShapes,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 5, 6, 7, 8),
                                            ::testing::Values(1, 5, 22, 64, 127, 128, 129, 300)));

TEST(RtnFile, CodesAreALittleEndianBitstreamPerRow) {
  // The stored words against codes packed here: code i at bits [i·bits, (i+1)·bits) of the
  // row's stream, rows padded to whole words with zero bits.
  for (int bits : {2, 3, 4})
    for (int64_t d_in : {22, 129}) {
      const int64_t d_out = 3;
      std::mt19937 rng(uint32_t(bits * 1000 + d_in));
      const auto w = random_vector(d_out * d_in, rng);
      const auto layer = RtnLinear::encode(w.data(), d_out, d_in, bits);
      const RtnReference ref = rtn_reference(w, d_out, d_in, bits);
      const int64_t words = (d_in * bits + 63) / 64;
      std::vector<uint64_t> expected(d_out * words, 0);
      for (int64_t o = 0; o < d_out; ++o)
        for (int64_t i = 0; i < d_in; ++i)
          for (int b = 0; b < bits; ++b)
            if ((ref.codes[o * d_in + i] >> b) & 1) {
              const int64_t bit = i * bits + b;
              expected[o * words + bit / 64] |= uint64_t{1} << (bit % 64);
            }
      const auto path = write_layer(*layer, "rtn-bits");
      const GgufFile file = GgufFile::open(path);
      const GgufTensor& codes = file.tensor("blk.0.attn_q.codes");
      ASSERT_EQ(codes.nbytes, expected.size() * sizeof(uint64_t));
      std::vector<uint64_t> stored(expected.size());
      std::memcpy(stored.data(), codes.data, codes.nbytes);
      EXPECT_EQ(stored, expected) << bits << "-bit, d_in " << d_in;
      EXPECT_EQ(get_f16(file, "blk.0.attn_q.scale", d_out * ((d_in + 127) / 128)), ref.scale);
      EXPECT_EQ(get_f16(file, "blk.0.attn_q.min", d_out * ((d_in + 127) / 128)), ref.minimum);
      std::filesystem::remove_all(path.parent_path());
    }
}

TEST(RtnFile, RoundTripIsBitIdentical) {
  for (int bits : {2, 3, 4}) {
    std::mt19937 rng{uint32_t(bits)};
    const auto w = random_vector(7 * 300, rng);
    const auto layer = RtnLinear::encode(w.data(), 7, 300, bits);
    const auto path = write_layer(*layer, "rtn");
    const auto loaded = RtnLinear::load(GgufFile::open(path), "blk.0.attn_q", 7, 300);
    EXPECT_EQ(loaded->format_name(), "rtn");
    EXPECT_EQ(loaded->describe(), layer->describe());
    EXPECT_EQ(loaded->storage_bits(), layer->storage_bits());
    expect_identical_outputs(*layer, *loaded, std::to_string(bits) + "-bit");
    std::filesystem::remove_all(path.parent_path());
  }
}

TEST(RtnFile, UnsupportedBitsAreRefused) {
  std::mt19937 rng(1);
  const auto w = random_vector(2 * 10, rng);
  const auto path = write_layer(*RtnLinear::encode(w.data(), 2, 10, 4), "rtn-bad");
  for (int64_t bits : {0, 9}) {
    GgufWriter out;
    {
      const GgufFile file = GgufFile::open(path);
      for (const auto& [key, value] : file.metadata())
        if (key != "general.alignment") out.set(key, value);
      for (const GgufTensor& t : file.tensors())
        out.add_tensor(t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
    }
    out.set("subbit.rtn.blk.0.attn_q.bits", bits);
    out.write(path);
    EXPECT_THROW(RtnLinear::load(GgufFile::open(path), "blk.0.attn_q", 2, 10), Error) << bits;
  }
  std::filesystem::remove_all(path.parent_path());
}

// Rows of their own widths: each row encodes and decodes as that row alone at its width does, the
// product matches the decoded matrix, and the file holds the widths and bit-identical codes.
TEST(RtnRowWidths, EachRowIsTheUniformEncodingAtItsWidth) {
  for (int64_t d_in : {7, 22, 129, 300}) {
    const std::vector<uint8_t> widths = {2, 8, 3, 5, 1, 4, 7, 6};
    const int64_t d_out = int64_t(widths.size());
    std::mt19937 rng{uint32_t(d_in)};
    const auto w = random_vector(d_out * d_in, rng);
    const auto layer = RtnLinear::encode(w.data(), d_out, d_in, widths);
    const std::string what = "d_in " + std::to_string(d_in);
    EXPECT_FALSE(layer->uniform());
    const auto w_hat = dequantized(*layer);
    int64_t words = 0;
    for (int64_t r = 0; r < d_out; ++r) {
      EXPECT_EQ(layer->row_bits(r), widths[r]);
      const auto alone = RtnLinear::encode(w.data() + r * d_in, 1, d_in, widths[r]);
      const auto row = dequantized(*alone);
      for (int64_t i = 0; i < d_in; ++i)
        ASSERT_EQ(w_hat[r * d_in + i], row[i]) << what << " row " << r << " column " << i;
      words += (d_in * widths[r] + 63) / 64;
    }
    expect_forward_matches_product(*layer, w_hat, 5, what);
    EXPECT_EQ(layer->storage_bits(), words * 64 + d_out * ((d_in + 127) / 128) * 32 + 8 * d_out)
        << what;
    EXPECT_NE(layer->describe().find("1-8 bits by row (mean 4.50)"), std::string::npos)
        << layer->describe();

    const auto path = write_layer(*layer, "rtn-rows");
    {
      const GgufFile file = GgufFile::open(path);
      EXPECT_EQ(file.get_int("subbit.rtn.blk.0.attn_q.bits"), 0);
      const GgufTensor& stored = file.tensor("blk.0.attn_q.row_bits");
      EXPECT_EQ(std::vector<uint8_t>(stored.data, stored.data + stored.nbytes), widths);
      EXPECT_EQ(file.tensor("blk.0.attn_q.codes").nbytes, size_t(words * 8)) << what;
      const auto loaded = RtnLinear::load(file, "blk.0.attn_q", d_out, d_in);
      EXPECT_EQ(loaded->describe(), layer->describe());
      EXPECT_EQ(loaded->storage_bits(), layer->storage_bits());
      expect_identical_outputs(*layer, *loaded, what);
    }
    std::filesystem::remove_all(path.parent_path());
  }
}

TEST(RtnRowWidths, AWidthOutsideOneToEightIsRefused) {
  std::mt19937 rng(3);
  const auto w = random_vector(3 * 40, rng);
  const auto path = write_layer(*RtnLinear::encode(w.data(), 3, 40, {2, 3, 4}), "rtn-rows-bad");
  for (uint8_t bad : {0, 9}) {
    GgufWriter out;
    {
      const GgufFile file = GgufFile::open(path);
      for (const auto& [key, value] : file.metadata())
        if (key != "general.alignment") out.set(key, value);
      for (const GgufTensor& t : file.tensors()) {
        std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
        if (t.name == "blk.0.attn_q.row_bits") bytes[1] = bad;
        out.add_tensor(t.name, t.type, t.shape, std::move(bytes));
      }
    }
    out.write(path);
    try {
      RtnLinear::load(GgufFile::open(path), "blk.0.attn_q", 3, 40);
      ADD_FAILURE() << "width " << int(bad) << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("row 1 has " + std::to_string(bad) + " bits"),
                std::string::npos)
          << e.what();
    }
  }
  std::filesystem::remove_all(path.parent_path());
}

// The greedy allocation spends exactly the budget and reaches the smallest importance-weighted
// error Σ importance_r · spread_r / (2^b_r − 1)² of every allocation with the same total
// (enumerated on 4 rows).
TEST(RtnRowWidths, AllocationSpendsTheBudgetAndIsOptimal) {
  const int64_t d_out = 4, d_in = 150;
  std::mt19937 rng(5);
  auto w = random_vector(d_out * d_in, rng);
  for (int64_t i = 0; i < d_in; ++i) w[3 * d_in + i] *= 4;  // a row of a wider range
  const std::vector<double> importance = {1, 30, 900, 2};
  std::vector<double> spread(d_out, 0);
  for (int64_t r = 0; r < d_out; ++r)
    for (int64_t begin = 0; begin < d_in; begin += 128) {
      const int64_t end = std::min<int64_t>(d_in, begin + 128);
      const auto [lo, hi] = std::minmax_element(&w[r * d_in + begin], &w[r * d_in + end]);
      spread[r] += double(end - begin) * double(*hi - *lo) * double(*hi - *lo);
    }
  const auto error = [&](const std::vector<uint8_t>& bits) {
    double e = 0;
    for (int64_t r = 0; r < d_out; ++r) {
      const double levels = double((1 << bits[r]) - 1);
      e += importance[r] * spread[r] / (levels * levels);
    }
    return e;
  };
  for (double mean : {2.0, 3.0, 4.5, 6.75, 8.0}) {
    const auto bits = RtnLinear::allocate_row_bits(w.data(), d_out, d_in, importance, mean);
    const int64_t total = std::accumulate(bits.begin(), bits.end(), int64_t{0});
    EXPECT_EQ(total, int64_t(mean * d_out)) << mean;
    double best = std::numeric_limits<double>::infinity();
    for (int a = 2; a <= 8; ++a)
      for (int b = 2; b <= 8; ++b)
        for (int c = 2; c <= 8; ++c) {
          const int d = int(total) - a - b - c;
          if (d >= 2 && d <= 8) best = std::min(best, error({uint8_t(a), uint8_t(b), uint8_t(c), uint8_t(d)}));
        }
    EXPECT_NEAR(error(bits), best, 1e-12 * best) << "mean " << mean;
  }
  const auto bits = RtnLinear::allocate_row_bits(w.data(), d_out, d_in, importance, 4.5);
  EXPECT_GT(bits[2], bits[0]) << "the most important row gets more bits";
  EXPECT_THROW(RtnLinear::allocate_row_bits(w.data(), d_out, d_in, importance, 1.5), Error);
  const std::vector<double> too_few = {1.0, 2.0};
  EXPECT_THROW(RtnLinear::allocate_row_bits(w.data(), d_out, d_in, too_few, 3), Error);
}

// ---------------------------------------------------------------------------------------------
// Sign: Ŵ = diag(a) sign(W) diag(b) with a bᵀ the best rank-1 approximation of |W| (its top
// singular pair, σ split evenly), a and b stored in fp16, sign(0) = +1.

// Top singular pair of a non-negative matrix by power iteration in double, run to convergence.
void top_singular_pair(const std::vector<float>& m, int64_t rows, int64_t cols,
                       std::vector<double>& u, std::vector<double>& v, double& sigma) {
  u.assign(rows, 1.0 / std::sqrt(double(rows)));
  v.assign(cols, 0.0);
  for (int iteration = 0; iteration < 500; ++iteration) {
    std::fill(v.begin(), v.end(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[c] += m[r * cols + c] * u[r];
    double norm = 0;
    for (double x : v) norm += x * x;
    for (double& x : v) x /= std::sqrt(norm);
    sigma = 0;
    for (int64_t r = 0; r < rows; ++r) {
      u[r] = 0;
      for (int64_t c = 0; c < cols; ++c) u[r] += m[r * cols + c] * v[c];
      sigma += u[r] * u[r];
    }
    sigma = std::sqrt(sigma);
    for (double& x : u) x /= sigma;
  }
}

class SignShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

TEST_P(SignShapes, EncodeDecodeAndProductMatchTheReference) {
  const auto [d_out, d_in] = GetParam();
  std::mt19937 rng(uint32_t(d_out * 1000 + d_in));
  auto w = random_vector(d_out * d_in, rng);
  // Magnitudes with a dominant rank-1 part, like trained weights, so the power iteration of the
  // encoder converges well within its iterations.
  for (int64_t o = 0; o < d_out; ++o)
    for (int64_t i = 0; i < d_in; ++i) w[o * d_in + i] *= float(1 + o % 3) * float(1 + i % 5);
  if (w.size() > 1) w[0] = 0.0f;  // sign(0) = +1 (a 1x1 zero matrix has no scales to check)
  const auto layer = SignLinear::encode(w.data(), d_out, d_in);
  std::vector<float> magnitude(w.size());
  for (size_t i = 0; i < w.size(); ++i) magnitude[i] = std::fabs(w[i]);
  std::vector<double> u, v;
  double sigma = 0;
  top_singular_pair(magnitude, d_out, d_in, u, v, sigma);
  const auto w_hat = dequantized(*layer);
  const std::string what = std::to_string(d_out) + "x" + std::to_string(d_in);
  for (int64_t o = 0; o < d_out; ++o)
    for (int64_t i = 0; i < d_in; ++i) {
      const double expected = (w[o * d_in + i] < 0 ? -1.0 : 1.0) * sigma * u[o] * v[i];
      // Two fp16 roundings (2 · 2^-11 relative) and the encoder's 30 power iterations.
      ASSERT_NEAR(w_hat[o * d_in + i], expected, 2e-3 * std::fabs(expected) + 1e-7)
          << what << " at " << o << "," << i;
      ASSERT_EQ(std::signbit(w_hat[o * d_in + i]), w[o * d_in + i] < 0)
          << what << " at " << o << "," << i;
    }
  expect_forward_matches_product(*layer, w_hat, 9, what);
  EXPECT_EQ(layer->storage_bits(), d_out * d_in + 16 * (d_out + d_in));
}

INSTANTIATE_TEST_SUITE_P(Awkward, SignShapes,
                         ::testing::Combine(::testing::Values(1, 3, 17),
                                            ::testing::Values(1, 5, 63, 64, 65, 129)));

TEST(SignFile, RoundTripIsBitIdentical) {
  std::mt19937 rng(5);
  const auto w = random_vector(9 * 130, rng);
  const auto layer = SignLinear::encode(w.data(), 9, 130);
  const auto path = write_layer(*layer, "sign");
  const auto loaded = SignLinear::load(GgufFile::open(path), "blk.0.attn_q", 9, 130);
  EXPECT_EQ(loaded->format_name(), "sign");
  EXPECT_EQ(loaded->storage_bits(), layer->storage_bits());
  expect_identical_outputs(*layer, *loaded, "sign 9x130");
  // A file whose shapes disagree with the model's is refused, not read past its end.
  EXPECT_THROW(SignLinear::load(GgufFile::open(path), "blk.0.attn_q", 9, 200), Error);
  std::filesystem::remove_all(path.parent_path());
}

// ---------------------------------------------------------------------------------------------
// LittleBit: the product of two paths of different ranks (neither a multiple of the kernel's 16
// rows, both large enough for the lookup-table kernel) against the product of the dequantized
// matrix, with 1-3 threads: decoding splits every stage's rows between the threads of one team,
// batches let each sign product split itself.

LittleBitPath random_path(int64_t d_out, int64_t d_in, int64_t rank, std::mt19937& rng) {
  LittleBitPath p;
  p.rank = rank;
  p.u_signs = testing::random_signs(d_out, rank, rng);
  p.vt_signs = testing::random_signs(rank, d_in, rng);
  p.h = random_vector(d_out, rng);
  p.g = random_vector(d_in, rng);
  p.l = random_vector(rank, rng);
  return p;
}

TEST(LittleBitProduct, TwoPathsOfOddRanksOnAnyThreadCount) {
  std::mt19937 rng(21);
  // Large enough (Σ rank·(d_in + d_out) >= kSignMinParallelWork) for the threads to split it.
  const int64_t d_out = 1400, d_in = 3000;
  std::vector<LittleBitPath> paths;
  paths.push_back(random_path(d_out, d_in, 400, rng));
  paths.push_back(random_path(d_out, d_in, 90, rng));
  ASSERT_GE(double(400 + 90) * double(d_in + d_out), kSignMinParallelWork);
  const LittleBitLinear layer(d_out, d_in, std::move(paths));
  const auto w_hat = dequantized(layer);
  const int saved = num_threads();
  // 1 and 3 tokens: one parallel region for the layer (decoding); 5: a batch.
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    for (int64_t tokens : {1, 3, 5})
      expect_forward_matches_product(
          layer, w_hat, tokens,
          "littlebit, threads " + std::to_string(threads) + ", tokens " + std::to_string(tokens));
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace subbit
