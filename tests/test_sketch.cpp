// UltraSketch runtime: the hash contract, bit accounting, the read-back rules' guarantees, the
// SIMD kernel against the scalar reference and the dense reconstruction, and the file format.
#include <fmt/format.h>
#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "common/dtype.h"
#include "common/error.h"
#include "formats/sketch.h"
#include "io/gguf.h"
#include "ops/sketch_matmul.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::dequantized;

float round_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// Normal weights rounded to fp16, so that fp16 tables hold them exactly.
std::vector<float> random_weights(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> w(n);
  for (float& x : w) x = round_f16(dist(rng));
  return w;
}

// Both hash versions a layer can have (ops/sketch_matmul.h): every kernel test runs under each.
constexpr int kHashVersions[] = {1, 2};

SketchParams small_params(SketchRule rule, int rows, int block, int value_bits,
                          std::vector<int64_t> buckets) {
  SketchParams p;
  p.rule = rule;
  p.rows = rows;
  p.block = block;
  p.value_bits = value_bits;
  p.buckets = std::move(buckets);
  return p;
}

TEST(SketchHash, OutputsArePinned) {
  // mix64 is the splitmix64 finalizer: its image of the golden ratio is splitmix64's first output.
  EXPECT_EQ(sketch_mix64(0), 0u);
  EXPECT_EQ(sketch_mix64(1), 0x5692161D100B05E5ull);
  EXPECT_EQ(sketch_mix64(0x9E3779B97F4A7C15ull), 0xE220A8397B1DCDAFull);

  EXPECT_EQ(sketch_block_hash_v1(0, 0, 0), 0u);
  EXPECT_EQ(sketch_block_hash_v1(0x5EED, 0, 0), 0xA18F67D4DB95243Full);
  EXPECT_EQ(sketch_block_hash_v1(0x5EED, 3, 7), 0x2DCE8B5257B1713Aull);
  EXPECT_EQ(sketch_block_hash_v1(~0ull, 4095, 255), 0x7D7DFFB20DE520F1ull);
  EXPECT_EQ(sketch_block_hash_v1(0x0123456789ABCDEFull, 11007, 687), 0x04C837D5445A280Cull);
  EXPECT_EQ(sketch_block_hash(1, 0x5EED, 3, 7, 256), 0x2DCE8B5257B1713Aull);

  // mix32 is murmur3's fmix32; version 2 hashes fold(seed) ^ (row · blocks_per_row + block) and
  // shows its 32 bits as h32 · 2^32 + (h32 mod 2). Values from an independent implementation.
  EXPECT_EQ(sketch_mix32(1), 0x514E28B7u);
  EXPECT_EQ(sketch_mix32(0xDEADBEEFu), 0x0DE5C6A9u);
  EXPECT_EQ(sketch_block_hash_v2(0, 0, 0, 1), 0u);
  EXPECT_EQ(sketch_block_hash_v2(0x5EED, 0, 0, 256), 0xE00099CA00000000ull);
  EXPECT_EQ(sketch_block_hash_v2(0x5EED, 3, 7, 256), 0x8395F53000000000ull);
  EXPECT_EQ(sketch_block_hash_v2(~0ull, 4095, 255, 256), 0x854B169900000001ull);
  EXPECT_EQ(sketch_block_hash_v2(0x0123456789ABCDEFull, 11007, 687, 688), 0x9EF4E58F00000001ull);
  EXPECT_EQ(sketch_block_hash(2, 0x5EED, 128255, 127, 128), 0xEF9941DC00000000ull);
  // floor(h32 · B / 2^32): the low bit below h32 never changes the bucket.
  EXPECT_EQ(sketch_bucket(0x8395F53000000000ull, 1000), 514u);
  EXPECT_EQ(sketch_bucket(0x854B169900000001ull, 65531), 34120u);
  EXPECT_EQ(sketch_bucket(0x9EF4E58F00000001ull, 0xFFFFFFFFull), 2666849678u);

  // bucket = floor(h · B / 2^64), computed with 128-bit integers independently of the code.
  EXPECT_EQ(sketch_bucket(0xA18F67D4DB95243Full, 1000), 631u);
  EXPECT_EQ(sketch_bucket(0xA18F67D4DB95243Full, 65531), 41356u);
  EXPECT_EQ(sketch_bucket(0xA18F67D4DB95243Full, 0xFFFFFFFFull), 2710530004u);
  EXPECT_EQ(sketch_bucket(0x2DCE8B5257B1713Aull, 1000), 178u);
  EXPECT_EQ(sketch_bucket(0x7D7DFFB20DE520F1ull, 65531), 32123u);
  EXPECT_EQ(sketch_bucket(0x04C837D5445A280Cull, 0xFFFFFFFFull), 80230357u);
  EXPECT_EQ(sketch_bucket(~0ull, 7), 6u);

  EXPECT_TRUE(sketch_negative(0xA18F67D4DB95243Full));
  EXPECT_FALSE(sketch_negative(0x2DCE8B5257B1713Aull));
}

TEST(SketchHash, BucketMatches128BitProduct) {
  std::mt19937_64 rng(5);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t h = rng(), buckets = 1 + rng() % 0xFFFFFFFFull;
    const uint64_t expected = uint64_t((static_cast<unsigned __int128>(h) * buckets) >> 64);
    ASSERT_EQ(sketch_bucket(h, buckets), expected) << h << " " << buckets;
    // A version-2 hash: the bucket and sign of its 32 bits.
    const uint32_t h32 = uint32_t(h);
    const uint64_t shown = uint64_t(h32) << 32 | (h32 & 1);
    ASSERT_EQ(sketch_bucket(shown, buckets), (uint64_t(h32) * buckets) >> 32)
        << h32 << " " << buckets;
    ASSERT_EQ(sketch_negative(shown), (h32 & 1) != 0);
  }
}

TEST(SketchHash, Version2GivesEveryBlockOfALayerItsOwnHash) {
  // 300 rows x 70 blocks: all 21000 hashes of a hash row differ (fold(seed) ^ index is one-to-one
  // and mix32 a bijection), and their buckets spread evenly.
  std::set<uint64_t> seen;
  std::vector<int> per_bucket(100, 0);
  for (int64_t r = 0; r < 300; ++r)
    for (int64_t b = 0; b < 70; ++b) {
      const uint64_t h = sketch_block_hash_v2(0x1234567890ull, r, b, 70);
      seen.insert(h);
      ++per_bucket[sketch_bucket(h, 100)];
    }
  EXPECT_EQ(seen.size(), 21000u);
  for (int n : per_bucket) {  // 210 expected, standard deviation 14.5
    EXPECT_GT(n, 150);
    EXPECT_LT(n, 270);
  }
}

TEST(SketchBits, FormulaCountsEveryStoredNumber) {
  // 2 rows, block 16, 4-bit, 100+99 buckets, no salient set, 64 x 256 weights.
  SketchParams p = small_params(SketchRule::AbsMinMax, 2, 16, 4, {100, 99});
  EXPECT_EQ(sketch_storage_bits(64, 256, p), 199 * 16 * 4 + 2 * 64 + 2 * 16 + 64 * (6 + 2));
  // fp16 values have no scales; a salient set adds its rows and the 1-bit-per-block mask
  // (64 rows x ceil(250 / 16) = 16 blocks).
  p.value_bits = 16;
  p.salient_buckets = {10, 10};
  p.salient_blocks = 5;
  EXPECT_EQ(sketch_storage_bits(64, 250, p), 219 * 16 * 16 + 4 * 64 + 64 * 16 + 64 * (6 + 4));

  const auto w = random_weights(64 * 250, 1);
  const auto layer = SketchLinear::encode(w.data(), 64, 250, p, nullptr);
  EXPECT_EQ(layer->storage_bits(), sketch_storage_bits(64, 250, p));
}

TEST(SketchBits, SolverMeetsTargetWithinOnePercentFromBelow) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {512, 512},   {896, 4864},   {1024, 3072},  {2048, 2048},  {2048, 5632}, {3072, 1024},
      {4096, 4096}, {4096, 11008}, {11008, 4096}, {14336, 4096}, {1000, 777}};
  int checked = 0;
  for (const auto& [d_out, d_in] : shapes)
    for (double target = 0.3; target <= 1.0001; target += 0.05)
      for (int rows : {1, 2, 3, 4})
        for (int block : {8, 16, 32})
          for (int value_bits : {2, 4, 8})
            for (double salient : {0.0, 0.05}) {
              const SketchParams p =
                  sketch_params_for_bpw(d_out, d_in, target, rows, block, value_bits, salient);
              const double bpw = sketch_bpw(d_out, d_in, p);
              ASSERT_LE(bpw, target)
                  << d_out << "x" << d_in << " rows " << rows << " block " << block;
              ASSERT_GE(bpw, 0.99 * target)
                  << d_out << "x" << d_in << " rows " << rows << " block " << block << " bits "
                  << value_bits << " salient " << salient;
              ASSERT_EQ(p.salient_buckets.empty(), salient == 0.0);
              if (salient > 0) {
                // The salient set gets about kSketchSalientDensity times the buckets per block.
                const int64_t blocks = d_out * ((d_in + block - 1) / block);
                const double main_density =
                    double(std::accumulate(p.buckets.begin(), p.buckets.end(), int64_t{0})) /
                    double(blocks - p.salient_blocks);
                const double salient_density =
                    double(std::accumulate(p.salient_buckets.begin(), p.salient_buckets.end(),
                                           int64_t{0})) /
                    double(p.salient_blocks);
                ASSERT_NEAR(salient_density / main_density, kSketchSalientDensity,
                            0.05 * kSketchSalientDensity);
              }
              ++checked;
            }
  EXPECT_GT(checked, 5000);
  // The default configuration (the one the speed and quality numbers use).
  EXPECT_NEAR(sketch_bpw(4096, 4096, sketch_params_for_bpw(4096, 4096, 0.5)), 0.5, 0.005);
}

TEST(SketchBands, BandsSplitEveryTableIntoConsecutiveRanges) {
  // 7 rows in bands of 3 (rows 0-2, 3-5, 6) over 10 buckets: [0, 3), [3, 6), [6, 10).
  const uint64_t first[] = {0, 0, 0, 3, 3, 3, 6}, count[] = {3, 3, 3, 3, 3, 3, 4};
  for (int64_t row = 0; row < 7; ++row) {
    EXPECT_EQ(sketch_band(10, 7, 3, row).first, first[row]) << row;
    EXPECT_EQ(sketch_band(10, 7, 3, row).count, count[row]) << row;
  }
  // One band (band_rows 0) is plain hashing over the whole table.
  EXPECT_EQ(sketch_band(10, 7, 0, 5).first, 0u);
  EXPECT_EQ(sketch_band(10, 7, 0, 5).count, 10u);
  // The ranges tile the table for any split.
  for (int64_t n_out : {1, 5, 64, 1000})
    for (int64_t band_rows : {1, 3, 17, 64})
      for (uint64_t buckets :
           {uint64_t{64}, uint64_t{100}, uint64_t{65531}, (uint64_t{1} << 32) - 1}) {
        if (band_rows > n_out || uint64_t(sketch_band_count(n_out, band_rows)) > buckets) continue;
        uint64_t next = 0;
        for (int64_t row = 0; row < n_out; row += band_rows) {
          const SketchBand band = sketch_band(buckets, n_out, band_rows, row);
          ASSERT_EQ(band.first, next) << n_out << " " << band_rows << " " << buckets;
          ASSERT_GE(band.count, 1u);
          next += band.count;
        }
        ASSERT_EQ(next, buckets) << n_out << " " << band_rows;
      }
}

TEST(SketchBands, SolverGivesEveryBandAtLeastTheAskedBuckets) {
  for (double salient : {0.0, 0.05})
    for (int64_t band_buckets : {int64_t{64}, int64_t{256}, kSketchBandBuckets}) {
      const SketchParams p =
          sketch_params_for_bpw(4096, 4096, 0.5, 2, 16, 4, salient, band_buckets);
      const int64_t bands = sketch_band_count(4096, p.band_rows);
      EXPECT_GT(bands, 1);
      for (const auto* set : {&p.buckets, &p.salient_buckets})
        for (int64_t buckets : *set) EXPECT_GE(buckets / bands, band_buckets) << salient;
    }
  // 4096 x 4096 at 0.5 bpw, blocks of 32: 32765 buckets per hash row, 127 bands asked, 33 rows
  // each (125 bands); blocks of 16: 65531 buckets, 255 bands asked, 17 rows each (241 bands).
  EXPECT_EQ(sketch_params_for_bpw(4096, 4096, 0.5).buckets[0], 32765);
  EXPECT_EQ(sketch_params_for_bpw(4096, 4096, 0.5).band_rows, 33);
  EXPECT_EQ(sketch_params_for_bpw(4096, 4096, 0.5, 2, 16).band_rows, 17);
  EXPECT_EQ(sketch_params_for_bpw(4096, 4096, 0.5, 2, 16, 4, 0.0, 0).band_rows,
            0);                                                 // asked for one band
  EXPECT_EQ(sketch_params_for_bpw(64, 256, 0.5).band_rows, 0);  // too few buckets for two
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.5, 2, 16, 4, 0.0, -1), Error);
}

TEST(SketchBands, EveryBlockReadsTheBucketsOfItsRowsBand) {
  const auto w = random_weights(40 * 96, 5);
  SketchParams p = sketch_params_for_bpw(40, 96, 4.0, 2, 8, 4, 0.1, 4);
  ASSERT_GT(p.band_rows, 0);
  const auto layer = SketchLinear::encode(w.data(), 40, 96, p, nullptr);
  const SketchMatrix& m = layer->matrix();
  std::set<std::pair<int, uint64_t>> read;  // (hash row, bucket)
  for (int64_t r = 0; r < m.n_out; ++r)
    for (int64_t b = 0; b < m.blocks_per_row(); ++b)
      for (int k = 0; k < m.rows; ++k) {
        const SketchHashRow& hr = m.hash_rows[k];
        const bool salient = m.salient(r, b);
        const SketchBand band =
            sketch_band(salient ? hr.salient_buckets : hr.buckets, m.n_out, m.band_rows, r);
        bool negative = false;
        const uint64_t bucket = m.bucket_index(k, r, b, &negative) - (salient ? hr.buckets : 0);
        ASSERT_GE(bucket, band.first) << r << " " << b;
        ASSERT_LT(bucket, band.first + band.count) << r << " " << b;
        read.insert({k, bucket + (salient ? hr.buckets : 0)});
      }
  // The bands still use the whole tables: with about two blocks per bucket, 1 - e^-2 = 86% of
  // the buckets are read (as with plain hashing).
  EXPECT_GT(read.size(), size_t(0.75 * double(m.rows) *
                                double(m.hash_rows[0].buckets + m.hash_rows[0].salient_buckets)));
}

TEST(SketchBits, TinyLayerGetsOneBucketPerRowAndOvershoots) {
  const SketchParams p = sketch_params_for_bpw(4, 8, 0.5, 2, 16, 4, 0.0);
  EXPECT_EQ(p.buckets, (std::vector<int64_t>{1, 1}));
  EXPECT_GT(sketch_bpw(4, 8, p), 0.5);
}

TEST(SketchBits, SolverRefusesBadSettings) {
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.5, 5, 16, 4, 0.0), Error);
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.5, 2, 65, 4, 0.0), Error);
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.5, 2, 16, 9, 0.0), Error);
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.0, 2, 16, 4, 0.0), Error);
  EXPECT_THROW(sketch_params_for_bpw(64, 64, 0.5, 2, 16, 4, 1.0), Error);
}

// Where each weight lands: for every weight and hash row, its bucket element (set, row, flat
// element index) and sign, from the public hash functions alone.
struct Placement {
  int set;
  int64_t element;  // bucket · block + position
  bool negative;
};

std::vector<std::vector<Placement>> placements(const SketchLinear& layer) {
  const SketchMatrix& m = layer.matrix();
  std::vector<SketchTableSet> sets;
  for (int s = 0; s < layer.sets(); ++s) sets.push_back(layer.table_set(s));
  std::vector<std::vector<Placement>> out(m.n_out * m.n_in);
  for (int64_t r = 0; r < m.n_out; ++r)
    for (int64_t c = 0; c < m.n_in; ++c) {
      const int64_t b = c / m.block;
      const int set = m.salient(r, b) ? 1 : 0;
      for (int k = 0; k < m.rows; ++k) {
        const uint64_t h =
            sketch_block_hash(m.hash_version, sets[set].seeds[k], r, b, m.blocks_per_row());
        const SketchBand band =
            sketch_band(uint64_t(sets[set].buckets[k]), m.n_out, m.band_rows, r);
        const int64_t bucket = int64_t(band.first + sketch_bucket(h, band.count));
        out[r * m.n_in + c].push_back({set, bucket * m.block + c % m.block, sketch_negative(h)});
      }
    }
  return out;
}

// Per (set, row, element): the weights hashed there, in insertion (row-major) order.
using Occupants = std::map<std::tuple<int, int, int64_t>, std::vector<int64_t>>;
Occupants occupants(const std::vector<std::vector<Placement>>& place) {
  Occupants out;
  for (int64_t i = 0; i < int64_t(place.size()); ++i)
    for (int k = 0; k < int(place[i].size()); ++k)
      out[{place[i][k].set, k, place[i][k].element}].push_back(i);
  return out;
}

// (salient set, hash version)
class SketchRuleProperties : public ::testing::TestWithParam<std::tuple<bool, int>> {};

// 12 x 30 weights (block 4: the last block of each row is half padding), 2 hash rows with 3 and
// 2 buckets: every element is shared by many weights. fp16 values keep the fp16 weights exact.
std::unique_ptr<SketchLinear> crowded_layer(SketchRule rule, bool salient, int hash_version,
                                            const std::vector<float>& w) {
  SketchParams p = small_params(rule, 2, 4, 16, {3, 2});
  p.hash_version = hash_version;
  if (salient) {
    p.salient_buckets = {4, 3};
    p.salient_blocks = 20;
  }
  return SketchLinear::encode(w.data(), 12, 30, p, nullptr);
}

// The min/max rules' guarantee on a crowded layer. With `underestimates` (absminmax) every
// read-back magnitude is <= the true one, and equal where in some hash row no smaller-magnitude
// weight shares the weight's element; otherwise (absmaxmin) the mirror image: >=, and equal where
// in some row no larger-magnitude weight shares it.
void expect_min_max_guarantee(SketchRule rule, bool underestimates, uint32_t seed) {
  const auto [salient, hash_version] =
      ::testing::WithParamInterface<std::tuple<bool, int>>::GetParam();
  const auto w = random_weights(12 * 30, seed);
  const auto layer = crowded_layer(rule, salient, hash_version, w);
  const auto read = dequantized(*layer);
  const auto place = placements(*layer);
  const Occupants occ = occupants(place);
  // Whether a weight of magnitude `other` sharing an element leaves magnitude `own` the one kept.
  auto own_is_kept = [&](float other, float own) {
    return underestimates ? other >= own : other <= own;
  };
  int exact = 0;
  for (int64_t i = 0; i < int64_t(w.size()); ++i) {
    if (underestimates)
      EXPECT_LE(std::fabs(read[i]), std::fabs(w[i])) << "weight " << i;
    else
      EXPECT_GE(std::fabs(read[i]), std::fabs(w[i])) << "weight " << i;
    bool kept_somewhere = false;
    for (int k = 0; k < 2; ++k) {
      bool kept = true;
      for (int64_t j : occ.at({place[i][k].set, k, place[i][k].element}))
        kept &= own_is_kept(std::fabs(w[j]), std::fabs(w[i]));
      kept_somewhere |= kept;
    }
    if (kept_somewhere) {
      EXPECT_EQ(std::fabs(read[i]), std::fabs(w[i])) << "weight " << i;
      ++exact;
    }
  }
  // The layer really is crowded: some weights are exact, most are not.
  EXPECT_GT(exact, 0);
  EXPECT_LT(exact, int(w.size()) / 2);
}

TEST_P(SketchRuleProperties, AbsMinMaxNeverOverestimates) {
  expect_min_max_guarantee(SketchRule::AbsMinMax, true, 11);
}

TEST_P(SketchRuleProperties, AbsMaxMinNeverUnderestimates) {
  expect_min_max_guarantee(SketchRule::AbsMaxMin, false, 12);
}

TEST_P(SketchRuleProperties, MeanIsTheMeanOfSignedCandidates) {
  const auto w = random_weights(12 * 30, 13);
  const auto [salient, hash_version] = GetParam();
  const auto layer = crowded_layer(SketchRule::Mean, salient, hash_version, w);
  const auto read = dequantized(*layer);
  const auto place = placements(*layer);
  const Occupants occ = occupants(place);
  for (int64_t i = 0; i < int64_t(w.size()); ++i) {
    // Row k's estimate: s_i · fp16(mean over the element of s_j · w_j).
    float sum = 0;
    for (int k = 0; k < 2; ++k) {
      double element = 0;
      const auto& shared = occ.at({place[i][k].set, k, place[i][k].element});
      for (int64_t j : shared) element += place[j][k].negative ? -double(w[j]) : double(w[j]);
      const float value = round_f16(float(element / double(shared.size())));
      sum += place[i][k].negative ? -value : value;
    }
    EXPECT_EQ(read[i], sum / 2.0f) << "weight " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(SalientSetAndHashVersion, SketchRuleProperties,
                         ::testing::Combine(::testing::Bool(), ::testing::ValuesIn(kHashVersions)));

TEST(SketchRules, AWeightAloneInEveryRowIsExactUnderEveryRule) {
  // One output row of 3 blocks into 1000 buckets: no two blocks share a bucket (checked).
  const auto w = random_weights(1 * 24, 14);
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin, SketchRule::Mean})
    for (int rows : {1, 2, 3}) {
      SketchParams p = small_params(rule, rows, 8, 16, std::vector<int64_t>(rows, 1000));
      const auto layer = SketchLinear::encode(w.data(), 1, 24, p, nullptr);
      const Occupants occ = occupants(placements(*layer));
      for (const auto& [where, weights] : occ) ASSERT_EQ(weights.size(), 1u);
      EXPECT_EQ(dequantized(*layer), w) << sketch_rule_name(rule) << " rows " << rows;
    }
}

TEST(SketchRules, EmptyElementsHoldZero) {
  // 1 x 5 weights, block 4: two blocks, the second holding one weight, into 50 buckets.
  const auto w = random_weights(5, 15);
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin, SketchRule::Mean}) {
    const auto layer =
        SketchLinear::encode(w.data(), 1, 5, small_params(rule, 2, 4, 16, {50, 50}), nullptr);
    const Occupants occ = occupants(placements(*layer));
    const SketchTableSet set = layer->table_set(0);
    for (int k = 0; k < 2; ++k)
      for (int64_t e = 0; e < 50 * 4; ++e)
        if (!occ.contains({0, k, e})) {
          EXPECT_EQ(set.values(k)[e], 0.0f) << "row " << k << " element " << e;
        }
  }
}

TEST(SketchEncode, SalientBlocksAreTheMostImportantOnes) {
  const int64_t d_out = 16, d_in = 64, block = 16;
  auto w = random_weights(d_out * d_in, 16);
  std::vector<float> column_rms(d_in, 1.0f);
  // Block 2 of every row (columns 32..47) dominates once the activations are taken into account.
  std::fill(column_rms.begin() + 32, column_rms.begin() + 48, 1000.0f);
  SketchParams p = small_params(SketchRule::AbsMinMax, 2, int(block), 4, {8, 8});
  p.salient_buckets = {16, 16};
  p.salient_blocks = d_out;
  const auto layer = SketchLinear::encode(w.data(), d_out, d_in, p, column_rms.data());
  for (int64_t r = 0; r < d_out; ++r)
    for (int64_t b = 0; b < d_in / block; ++b) EXPECT_EQ(layer->matrix().salient(r, b), b == 2);
  EXPECT_NE(layer->describe().find("salient 25%"), std::string::npos) << layer->describe();
}

TEST(SketchEncode, DeterministicForAFixedSeed) {
  const auto w = random_weights(40 * 70, 17);
  SketchParams p = sketch_params_for_bpw(40, 70, 4.0, 2, 8, 4, 0.1);
  const auto a = SketchLinear::encode(w.data(), 40, 70, p, nullptr);
  const auto b = SketchLinear::encode(w.data(), 40, 70, p, nullptr);
  EXPECT_EQ(dequantized(*a), dequantized(*b));
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(a->table_set(s).codes, b->table_set(s).codes);
    EXPECT_EQ(a->table_set(s).seeds, b->table_set(s).seeds);
  }
  EXPECT_EQ(a->salient_mask(), b->salient_mask());
  p.seed += 1;
  const auto c = SketchLinear::encode(w.data(), 40, 70, p, nullptr);
  EXPECT_NE(a->table_set(0).seeds, c->table_set(0).seeds);
  EXPECT_NE(dequantized(*a), dequantized(*c));
}

TEST(SketchEncode, QuantizedValuesLieOnTheirRowsGrid) {
  const auto w = random_weights(32 * 64, 18);
  for (int bits : {2, 3, 4, 8}) {
    const auto layer = SketchLinear::encode(
        w.data(), 32, 64, sketch_params_for_bpw(32, 64, 8.0, 2, 16, bits), nullptr);
    const SketchTableSet set = layer->table_set(0);
    const float q_max = float((1 << (bits - 1)) - 1);
    for (int k = 0; k < 2; ++k) {
      EXPECT_EQ(round_f16(set.scales[k]), set.scales[k]);
      for (float v : set.values(k)) {
        const float q = v / set.scales[k];
        ASSERT_EQ(q, std::nearbyint(q));
        ASSERT_LE(std::fabs(q), q_max);
      }
    }
  }
}

TEST(SketchEncode, RefusesInconsistentParams) {
  const auto w = random_weights(8 * 8, 19);
  SketchParams p = small_params(SketchRule::AbsMinMax, 2, 4, 4, {4});  // one bucket count, two rows
  EXPECT_THROW(SketchLinear::encode(w.data(), 8, 8, p, nullptr), Error);
  p.buckets = {4, 0};
  EXPECT_THROW(SketchLinear::encode(w.data(), 8, 8, p, nullptr), Error);
  p.buckets = {4, 4};
  p.salient_blocks = 3;  // salient blocks without a salient table set
  EXPECT_THROW(SketchLinear::encode(w.data(), 8, 8, p, nullptr), Error);
  p.salient_buckets = {2, 2};
  p.salient_blocks = 17;  // more than the 16 blocks there are
  EXPECT_THROW(SketchLinear::encode(w.data(), 8, 8, p, nullptr), Error);
}

// Each weight rebuilt here from the logical tables (table_set, not the runtime's code layouts),
// the block's bucket and sign in every hash row, and the rule, so the decoder the reference
// product and dequantize() share is checked against something it does not call.
std::vector<float> reconstructed_by_rule(const SketchLinear& layer) {
  const SketchMatrix& m = layer.matrix();
  const int64_t d_out = layer.n_out(), d_in = layer.n_in(), block = layer.block();
  std::vector<SketchTableSet> sets;
  std::vector<std::vector<std::vector<float>>> values;  // [set][k]: (buckets, block)
  for (int s = 0; s < layer.sets(); ++s) {
    sets.push_back(layer.table_set(s));
    values.emplace_back();
    for (int k = 0; k < m.rows; ++k) values.back().push_back(sets.back().values(k));
  }
  std::vector<float> w(d_out * d_in);
  for (int64_t r = 0; r < d_out; ++r)
    for (int64_t c = 0; c < d_in; ++c) {
      float chosen = 0;
      double sum = 0;
      for (int k = 0; k < m.rows; ++k) {
        bool negative = false;
        uint64_t bucket = m.bucket_index(k, r, c / block, &negative);
        const int s = bucket < uint64_t(sets[0].buckets[k]) ? 0 : 1;
        if (s == 1) bucket -= uint64_t(sets[0].buckets[k]);
        const float e = (negative ? -1.0f : 1.0f) * values[s][k][bucket * block + c % block];
        sum += e;
        const bool replaces = m.rule == SketchRule::AbsMinMax   ? std::fabs(e) > std::fabs(chosen)
                              : m.rule == SketchRule::AbsMaxMin ? std::fabs(e) < std::fabs(chosen)
                                                                : false;
        if (k == 0 || replaces) chosen = e;  // strict: the lowest row wins a tie
      }
      w[r * d_in + c] = m.rule == SketchRule::Mean ? float(sum / m.rows) : chosen;
    }
  return w;
}

// The SIMD kernel against the scalar reference, and the reference's decoded weights against
// reconstructed_by_rule(), over awkward shapes. The SIMD kernel sums in fp32 in another order
// than the double reference, so it agrees to 1e-5 of Σ|w·x| (a few ulps per term for n_in <= 100).
// (rule, hash rows, block, salient set, hash version)
class SketchKernel : public ::testing::TestWithParam<std::tuple<SketchRule, int, int, bool, int>> {
};

// The exactness checks hold for the fp32 products: they switch the BF16 one-token products (on by
// default where the CPU has AVX512_BF16 and VBMI) off while they run; those have their own test
// against the BF16-rounded product (Bf16ProductsMatchRoundedReference).
class ExactProducts {
 public:
  ExactProducts() : was_(set_sketch_bf16_products(false)) {}
  ~ExactProducts() { set_sketch_bf16_products(was_); }
  ExactProducts(const ExactProducts&) = delete;
  ExactProducts& operator=(const ExactProducts&) = delete;

 private:
  bool was_;
};

TEST_P(SketchKernel, SimdMatchesReferenceAndDenseReconstruction) {
  const ExactProducts exact;
  const auto [rule, rows, block, salient, hash_version] = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t d_out : {1, 3, 17, 64})
    for (int64_t d_in : {5, 16, 33, 100}) {
      const int64_t blocks = d_out * ((d_in + block - 1) / block);
      SketchParams p;
      p.rule = rule;
      p.rows = rows;
      p.block = block;
      p.value_bits = d_in == 33 ? 16 : d_in == 5 ? 2 : 4;
      p.hash_version = hash_version;
      for (int k = 0; k < rows; ++k) p.buckets.push_back(1 + (blocks + k) / 3);
      if (salient && blocks > 1) {
        p.salient_blocks = (blocks + 4) / 5;
        p.salient_buckets.assign(rows, 1 + p.salient_blocks / 2);
      }
      if (d_out >= 17) p.band_rows = (d_out + 2) / 3;  // 3 row bands
      std::vector<float> w(d_out * d_in);
      for (float& v : w) v = dist(rng);
      const auto layer = SketchLinear::encode(w.data(), d_out, d_in, p, nullptr);
      const auto dense = dequantized(*layer);
      const auto rebuilt = reconstructed_by_rule(*layer);
      for (int64_t i = 0; i < d_out * d_in; ++i)
        ASSERT_NEAR(dense[i], rebuilt[i], 1e-6f * (1 + std::fabs(rebuilt[i])))
            << d_out << "x" << d_in << " weight " << i;
      for (int64_t tokens : {1, 2, 7}) {
        std::vector<float> x(tokens * d_in);
        for (float& v : x) v = dist(rng);
        std::vector<float> fast(tokens * d_out), reference(tokens * d_out);
        Scratch scratch;
        layer->forward(x.data(), fast.data(), tokens, scratch);
        sketch_matmul_reference(layer->matrix(), x.data(), reference.data(), tokens);
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t o = 0; o < d_out; ++o) {
            double magnitude = 0;
            for (int64_t i = 0; i < d_in; ++i)
              magnitude += std::fabs(rebuilt[o * d_in + i] * x[t * d_in + i]);
            double expected = 0;  // the product of the rebuilt weights
            for (int64_t i = 0; i < d_in; ++i)
              expected += double(rebuilt[o * d_in + i]) * x[t * d_in + i];
            const int64_t at = t * d_out + o;
            ASSERT_NEAR(reference[at], expected, 1e-6 * magnitude + 1e-7)
                << d_out << "x" << d_in << " tokens " << tokens;
            ASSERT_NEAR(fast[at], reference[at], 1e-5 * magnitude + 1e-6)
                << d_out << "x" << d_in << " tokens " << tokens << " output " << at;
          }
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Awkward, SketchKernel,
                         ::testing::Combine(::testing::Values(SketchRule::AbsMinMax,
                                                              SketchRule::AbsMaxMin,
                                                              SketchRule::Mean),
                                            ::testing::Values(1, 2, 3), ::testing::Values(1, 8, 16),
                                            ::testing::Bool(), ::testing::ValuesIn(kHashVersions)));

// The SIMD kernel against the scalar reference on `tokens` activation rows drawn from `rng`:
// within 1e-4 · (1 + |reference|) per output.
void expect_near_reference(const SketchLinear& layer, int64_t tokens, std::mt19937& rng,
                           const std::string& what) {
  const ExactProducts exact;
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(tokens * layer.n_in());
  for (float& v : x) v = dist(rng);
  std::vector<float> fast(tokens * layer.n_out()), reference(tokens * layer.n_out());
  Scratch scratch;
  layer.forward(x.data(), fast.data(), tokens, scratch);
  sketch_matmul_reference(layer.matrix(), x.data(), reference.data(), tokens);
  for (size_t i = 0; i < fast.size(); ++i)
    ASSERT_NEAR(fast[i], reference[i], 1e-4 * (1 + std::fabs(reference[i])))
        << what << " tokens " << tokens << " output " << i;
}

TEST(SketchKernel, LargeBlocksAndFourRows) {
  std::mt19937 rng(99);
  for (int block : {5, 33, 64})
    for (int hash_version : kHashVersions) {
      const auto w = random_weights(9 * 150, uint32_t(block));
      SketchParams p = sketch_params_for_bpw(9, 150, 6.0, 4, block, 4, 0.2);
      p.rule = SketchRule::Mean;
      p.hash_version = hash_version;
      expect_near_reference(*SketchLinear::encode(w.data(), 9, 150, p, nullptr), 3, rng,
                            fmt::format("block {} hash v{}", block, hash_version));
    }
}

// The SIMD kernel against the scalar reference (which equals the dense product of the
// reconstruction): within 1e-5 of Σ|w·x| per output, as above (fp32 summation in another order).
void expect_kernel_matches_reference(const SketchLinear& layer, int64_t tokens, uint32_t seed,
                                     const std::string& what) {
  const ExactProducts exact;
  const int64_t d_out = layer.n_out(), d_in = layer.n_in();
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(tokens * d_in);
  for (float& v : x) v = dist(rng);
  const auto dense = dequantized(layer);
  std::vector<float> fast(tokens * d_out), reference(tokens * d_out);
  Scratch scratch;
  layer.forward(x.data(), fast.data(), tokens, scratch);
  sketch_matmul_reference(layer.matrix(), x.data(), reference.data(), tokens);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t o = 0; o < d_out; ++o) {
      double magnitude = 0;
      for (int64_t i = 0; i < d_in; ++i)
        magnitude += std::fabs(dense[o * d_in + i] * x[t * d_in + i]);
      ASSERT_NEAR(fast[t * d_out + o], reference[t * d_out + o], 1e-5 * magnitude + 1e-6)
          << what << " tokens " << tokens << " token " << t << " output " << o;
    }
}

// Random weights (d_out, d_in) from `weight_seed` encoded with `p` under each hash version, then
// `check`ed.
void for_each_hash_version(int64_t d_out, int64_t d_in, uint32_t weight_seed, SketchParams p,
                           const std::function<void(const SketchLinear&, std::string)>& check) {
  const auto w = random_weights(d_out * d_in, weight_seed);
  for (int hash_version : kHashVersions) {
    p.hash_version = hash_version;
    check(*SketchLinear::encode(w.data(), d_out, d_in, p, nullptr),
          fmt::format("hash v{}", hash_version));
  }
}

TEST(SketchKernel, ThreadedAndTokenBlockedMatchReference) {
  // Large enough to be split over threads; 70 tokens span two token blocks of the batched path.
  std::mt19937 rng(8);
  for_each_hash_version(300, 1000, 7, sketch_params_for_bpw(300, 1000, 0.8, 2, 16, 4, 0.05),
                        [&](const SketchLinear& layer, const std::string& what) {
                          for (int64_t tokens : {1, 70})
                            expect_near_reference(layer, tokens, rng, what);
                        });
}

TEST(SketchKernel, TablesStreamedBandAheadMatchReference) {
  // Tables over 1 MiB with row bands: the one-token product requests the next band's table lines
  // while it multiplies the current band; 2047 rows leave the last one unpaired.
  for_each_hash_version(2047, 2048, 11, sketch_params_for_bpw(2047, 2048, 1.5, 2, 16, 4, 0.0),
                        [](const SketchLinear& layer, const std::string& what) {
                          ASSERT_GT(layer.matrix().band_rows, 0);
                          ASSERT_GT(layer.runtime_bytes(), int64_t{1} << 20);
                          expect_kernel_matches_reference(layer, 1, 3, "streamed, " + what);
                        });
}

// The BF16 one-token products (ops/sketch_matmul.h) of layers with the defaults (4-bit codes, two
// hash rows, absmaxmin, block 32) against the product of the reconstruction rounded to BF16 times
// x rounded to BF16: within 1e-5 of Σ|w·x| (fp32 summation in another order), and within 2^-7 of
// it of the exact product. Odd row counts, a single row and block, inputs past the last whole
// block, streamed tables; ties in magnitude (all_ties_layer) go to hash row 0 as in fp32.
std::unique_ptr<SketchLinear> all_ties_layer(SketchRule rule, int rows, int block, int value_bits,
                                             bool salient, int hash_version, int64_t d_out,
                                             int64_t d_in);

void expect_bf16_product(const SketchLinear& layer, const std::string& what) {
  const SketchMatrix& m = layer.matrix();
  ASSERT_TRUE(m.rule == SketchRule::AbsMaxMin && m.rows == 2 && m.block == 32 &&
              m.layout == SketchTableLayout::Nibble && m.salient_mask == nullptr)
      << what;
  const int64_t d_out = layer.n_out(), d_in = layer.n_in();
  std::mt19937 rng(17);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(d_in), fast(d_out);
  for (float& v : x) v = dist(rng);
  Scratch scratch;
  layer.forward(x.data(), fast.data(), 1, scratch);
  const auto dense = dequantized(layer);
  for (int64_t o = 0; o < d_out; ++o) {
    double rounded = 0, exact = 0, magnitude = 0;
    for (int64_t i = 0; i < d_in; ++i) {
      const double w = bf16_to_f32(f32_to_bf16(dense[o * d_in + i]));
      const double xi = bf16_to_f32(f32_to_bf16(x[i]));
      rounded += w * xi;
      exact += double(dense[o * d_in + i]) * x[i];
      magnitude += std::fabs(w * xi);
    }
    ASSERT_NEAR(fast[o], rounded, 1e-5 * magnitude + 1e-6) << what << " output " << o;
    ASSERT_NEAR(fast[o], exact, 0x1p-7 * magnitude + 1e-6) << what << " output " << o;
  }
}

TEST(SketchKernel, Bf16ProductsMatchRoundedReference) {
  if (!sketch_bf16_products()) GTEST_SKIP() << "this CPU lacks AVX512_BF16 or AVX512_VBMI";
  const std::pair<int64_t, int64_t> shapes[] = {{1, 32}, {37, 160}, {9, 150}, {64, 1000}};
  for (const auto& shape : shapes)
    for (double bpw : {0.5, 2.0}) {
      const int64_t d_out = shape.first, d_in = shape.second;  // clang 14 captures no bindings
      for_each_hash_version(d_out, d_in, 23, sketch_params_for_bpw(d_out, d_in, bpw, 2, 32, 4, 0.0),
                            [&](const SketchLinear& layer, const std::string& what) {
                              expect_bf16_product(
                                  layer, fmt::format("{}x{} bpw {} {}", d_out, d_in, bpw, what));
                            });
    }
  // Tables over 1 MiB with row bands, streamed a band ahead; 2047 rows leave the last one unpaired.
  for_each_hash_version(2047, 2048, 11, sketch_params_for_bpw(2047, 2048, 1.5, 2, 32, 4, 0.0),
                        [](const SketchLinear& layer, const std::string& what) {
                          ASSERT_GT(layer.matrix().band_rows, 0);
                          ASSERT_GT(layer.runtime_bytes(), int64_t{1} << 20);
                          expect_bf16_product(layer, "streamed, " + what);
                        });
  for (int hash_version : kHashVersions)
    expect_bf16_product(
        *all_ties_layer(SketchRule::AbsMaxMin, 2, 32, 4, false, hash_version, 21, 96),
        fmt::format("all ties, hash v{}", hash_version));
}

// A layer whose buckets all hold the same vector in every hash row and set (equal steps), so
// every weight's estimates tie in magnitude, with opposite signs wherever the rows' signs differ:
// the rule must pick the lowest hash row (the SIMD kernel selects with VRANGEPS on AVX-512,
// which breaks such ties by sign unless told otherwise).
std::unique_ptr<SketchLinear> all_ties_layer(SketchRule rule, int rows, int block, int value_bits,
                                             bool salient, int hash_version, int64_t d_out,
                                             int64_t d_in) {
  const int64_t blocks = d_out * ((d_in + block - 1) / block);
  const int q_max = value_bits == 16 ? 7 : (1 << (value_bits - 1)) - 1;
  const float step = value_bits == 16 ? 1.0f : 0.0625f;
  std::vector<SketchTableSet> sets(salient ? 2 : 1);
  std::mt19937_64 seeds(77);
  for (size_t s = 0; s < sets.size(); ++s) {
    SketchTableSet& set = sets[s];
    for (int k = 0; k < rows; ++k) {
      const int64_t buckets = s == 0 ? 5 + k : 3 + k;
      set.buckets.push_back(buckets);
      set.seeds.push_back(seeds());
      if (value_bits != 16) set.scales.push_back(step);
      set.value_bits = value_bits;
      std::vector<int16_t> codes(buckets * block);
      for (int64_t i = 0; i < buckets * block; ++i) {
        const int64_t j = i % block;  // nonzero, both signs
        codes[i] =
            sketch_code(float((j % 2 ? -1 : 1) * int(1 + j % q_max)) * step, value_bits, step);
      }
      set.codes.push_back(std::move(codes));
    }
  }
  std::vector<uint64_t> mask;
  if (salient) {
    mask.assign((blocks + 63) / 64, 0);
    for (int64_t b = 0; b < blocks; b += 3) mask[b / 64] |= uint64_t{1} << (b % 64);
  }
  return std::make_unique<SketchLinear>(d_out, d_in, rule, block, 0, hash_version, sets,
                                        std::move(mask));
}

TEST(SketchKernel, MagnitudeTiesGoToTheLowestRow) {
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin})
    for (int rows : {2, 3, 4})
      for (int value_bits : {4, 8, 16})
        for (int block : {8, 16, 32})
          for (bool salient : {false, true})
            for (int hash_version : kHashVersions) {
              const auto layer =
                  all_ties_layer(rule, rows, block, value_bits, salient, hash_version, 21, 96);
              // The reference itself: every weight is row 0's estimate.
              const auto w = dequantized(*layer);
              const SketchMatrix& m = layer->matrix();
              for (int64_t r = 0; r < 21; ++r)
                for (int64_t c = 0; c < 96; ++c) {
                  const bool sal = m.salient(r, c / block);
                  const SketchHashRow& hr = m.hash_rows[0];
                  const uint64_t h =
                      sketch_block_hash(hash_version, sal ? hr.salient_seed : hr.seed, r, c / block,
                                        m.blocks_per_row());
                  const float v = m.value(0,
                                          sal ? hr.buckets + sketch_bucket(h, hr.salient_buckets)
                                              : sketch_bucket(h, hr.buckets),
                                          c % block);
                  ASSERT_EQ(w[r * 96 + c], sketch_negative(h) ? -v : v);
                }
              const std::string what = fmt::format("{} rows {} {}-bit block {} salient {} hash v{}",
                                                   sketch_rule_name(rule), rows, value_bits, block,
                                                   salient, hash_version);
              for (int64_t tokens : {1, 3, 8, 12})
                expect_kernel_matches_reference(*layer, tokens, 5, what);
            }
}

// Every SIMD target compiled in (AVX-512, AVX2, SSE4, scalar, ... as the CPU supports them)
// against the reference, over the table layouts (fp32 for fp16 values, int8 codes, 4-bit codes
// in strides of 16, 32 and 48), rules, hash rows, salient sets and the one-token, fused and banded
// several-token paths.
TEST(SketchKernel, EveryCompiledTargetMatchesReference) {
  std::vector<std::unique_ptr<SketchLinear>> layers;
  std::vector<std::string> names;
  const auto w = random_weights(19 * 100, 31);
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin, SketchRule::Mean})
    for (int rows : {1, 2, 3})
      for (int value_bits : {2, 4, 8, 16})
        for (int block : {8, 16, 32, 40})
          for (double salient : {0.0, 0.1})
            for (int hash_version : kHashVersions) {
              // Plain hashing, and row bands of at least 4 buckets.
              SketchParams p = sketch_params_for_bpw(19, 100, 3.0, rows, block, value_bits, salient,
                                                     block == 16 ? 4 : 0);
              p.rule = rule;
              p.hash_version = hash_version;
              layers.push_back(SketchLinear::encode(w.data(), 19, 100, p, nullptr));
              names.push_back(
                  fmt::format("{} rows {} {}-bit block {} salient {} band rows {} hash v{}",
                              sketch_rule_name(rule), rows, value_bits, block, salient, p.band_rows,
                              hash_version));
            }
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
    for (size_t i = 0; i < layers.size(); ++i)
      for (int64_t tokens : {1, 2, 5, 11}) {
        expect_kernel_matches_reference(*layers[i], tokens, uint32_t(i),
                                        std::string(hwy::TargetName(target)) + " " + names[i]);
        if (::testing::Test::HasFatalFailure()) break;
      }
    if (::testing::Test::HasFatalFailure()) break;
  }
  hwy::SetSupportedTargetsForTest(0);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
}

TEST(SketchLayer, RuntimeTablesTakeAByteAWeightOfCode) {
  // 4-bit codes are packed two per byte with a negated copy (the kernels pick the sign by
  // address), wider codes take a byte, fp16 values are widened to fp32; buckets are padded to
  // sketch_bucket_stride(block) elements and each table to whole 64-byte lines.
  const auto w = random_weights(64 * 256, 41);
  for (int value_bits : {4, 8, 16}) {
    const SketchParams p = sketch_params_for_bpw(64, 256, 2.0, 2, 16, value_bits, 0.0);
    const auto layer = SketchLinear::encode(w.data(), 64, 256, p, nullptr);
    int64_t expected = 0;
    for (int64_t buckets : p.buckets)
      expected += (buckets * 16 * (value_bits == 16 ? 4 : 1) + 63) / 64 * 64;
    EXPECT_EQ(layer->runtime_bytes(), expected) << value_bits;
  }
}

// Save/load through a real model file.
class SketchFile : public ::testing::Test {
 protected:
  std::filesystem::path path_ = testing::temp_dir("sketch") / "layer.gguf";

  static std::unique_ptr<SketchLinear> make_layer(int value_bits, double salient,
                                                  int hash_version = kSketchHashVersion) {
    const auto w = random_weights(24 * 100, 21);
    std::vector<float> column_rms(100);
    for (int64_t c = 0; c < 100; ++c) column_rms[c] = 0.5f + float(c % 7);
    SketchParams p = sketch_params_for_bpw(24, 100, 3.0, 3, 8, value_bits, salient, 4);
    p.rule = SketchRule::AbsMaxMin;
    p.hash_version = hash_version;
    return SketchLinear::encode(w.data(), 24, 100, p, column_rms.data());
  }

  void write(const Linear& layer) const {
    GgufWriter out;
    layer.save(out, "blk.0.ffn_up");
    out.write(path_);
  }

  // Rewrites the file with `edit` applied to one tensor's shape and bytes.
  void corrupt_tensor(
      const std::string& name,
      const std::function<void(std::vector<int64_t>&, std::vector<uint8_t>&)>& edit) const {
    GgufWriter out;
    {
      const GgufFile file = GgufFile::open(path_);
      for (const auto& [key, value] : file.metadata())
        if (key != "general.alignment") out.set(key, value);
      for (const GgufTensor& t : file.tensors()) {
        std::vector<int64_t> shape = t.shape;
        std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
        if (t.name == name) edit(shape, bytes);
        out.add_tensor(t.name, t.type, shape, std::move(bytes));
      }
    }
    out.write(path_);
  }

  std::unique_ptr<Linear> load() const {
    const GgufFile file = GgufFile::open(path_);
    return SketchLinear::load(file, "blk.0.ffn_up", 24, 100);
  }
};

// The products of two layers on the same random activations, bit for bit.
void expect_same_outputs(const Linear& a, const Linear& b, const std::string& what) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t tokens : {1, 5}) {
    std::vector<float> x(tokens * a.n_in()), before(tokens * a.n_out()), after(tokens * a.n_out());
    for (float& v : x) v = dist(rng);
    Scratch scratch;
    a.forward(x.data(), before.data(), tokens, scratch);
    b.forward(x.data(), after.data(), tokens, scratch);
    EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0)
        << what << ", tokens " << tokens;
  }
}

TEST_F(SketchFile, RoundTripGivesBitIdenticalOutputs) {
  for (int value_bits : {4, 16, 3})
    for (double salient : {0.0, 0.1})
      for (int hash_version : kHashVersions) {
        const auto layer = make_layer(value_bits, salient, hash_version);
        write(*layer);
        const auto loaded = load();
        EXPECT_EQ(static_cast<const SketchLinear&>(*loaded).hash_version(), hash_version);
        EXPECT_EQ(loaded->format_name(), "sketch");
        EXPECT_EQ(loaded->storage_bits(), layer->storage_bits());
        EXPECT_EQ(loaded->describe(), layer->describe());
        expect_same_outputs(
            *layer, *loaded,
            fmt::format("{}-bit, salient {}, hash v{}", value_bits, salient, hash_version));
      }
}

TEST_F(SketchFile, ConfigWithoutHashVersionReadsAsVersion1) {
  // Files written before hash versions have 5 config numbers (and before row bands 4).
  const auto layer = make_layer(4, 0.1, 1);
  const std::string key = "subbit.sketch.blk.0.ffn_up.config";
  GgufWriter out;
  layer->save(out, "blk.0.ffn_up");
  std::vector<int64_t> config{int64_t(layer->rule()), layer->block(), layer->value_bits(),
                              layer->rows(), layer->band_rows()};
  out.set(key, config);
  out.write(path_);
  auto loaded = load();
  EXPECT_EQ(static_cast<const SketchLinear&>(*loaded).hash_version(), 1);
  expect_same_outputs(*layer, *loaded, "5-number config");
  EXPECT_NE(layer->describe().find("hash v1"), std::string::npos) << layer->describe();
  // The same file read as version 2 decodes other weights.
  config.push_back(2);
  GgufWriter as_v2;
  layer->save(as_v2, "blk.0.ffn_up");
  as_v2.set(key, config);
  as_v2.write(path_);
  loaded = load();
  EXPECT_NE(dequantized(*loaded), dequantized(*layer));
}

TEST_F(SketchFile, TruncatedFileIsRefused) {
  write(*make_layer(4, 0.1));
  std::filesystem::resize_file(path_, std::filesystem::file_size(path_) - 40);
  EXPECT_THROW(load(), Error);
}

TEST_F(SketchFile, OutOfRangeCodeIsRefused) {
  write(*make_layer(4, 0.0));
  // 4-bit codes run 0..14 (q + 7); 0xF is not a code.
  corrupt_tensor("blk.0.ffn_up.sketch1",
                 [](auto&, std::vector<uint8_t>& bytes) { bytes[3] = 0xFF; });
  try {
    load();
    FAIL() << "corrupt code accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
}

TEST_F(SketchFile, ShortTableTensorIsRefused) {
  write(*make_layer(4, 0.1));
  corrupt_tensor("blk.0.ffn_up.sketch_salient2",
                 [](std::vector<int64_t>& shape, std::vector<uint8_t>& bytes) {
                   shape[1] -= 8;
                   bytes.resize(bytes.size() - 8);
                 });
  EXPECT_THROW(load(), Error);
}

TEST_F(SketchFile, NonFiniteFp16ValueIsRefused) {
  write(*make_layer(16, 0.0));
  corrupt_tensor("blk.0.ffn_up.sketch0",
                 [](auto&, std::vector<uint8_t>& bytes) { bytes[0] = 0x00, bytes[1] = 0x7C; });
  EXPECT_THROW(load(), Error);
}

TEST_F(SketchFile, BadScaleIsRefused) {
  write(*make_layer(4, 0.0));
  corrupt_tensor("blk.0.ffn_up.sketch_scales",
                 [](auto&, std::vector<uint8_t>& bytes) { bytes[0] = 0x00, bytes[1] = 0x00; });
  EXPECT_THROW(load(), Error);
}

TEST_F(SketchFile, MaskBitsPastTheLastBlockAreRefused) {
  write(*make_layer(4, 0.1));
  // 24 rows x 13 blocks = 312 mask bits in 5 words; bit 319 is padding.
  corrupt_tensor("blk.0.ffn_up.sketch_mask",
                 [](auto&, std::vector<uint8_t>& bytes) { bytes.back() |= 0x80; });
  EXPECT_THROW(load(), Error);
}

TEST_F(SketchFile, BadHeaderIsRefused) {
  const auto layer = make_layer(4, 0.0);
  auto expect_refused = [&](const std::string& key, GgufValue value) {
    GgufWriter out;
    layer->save(out, "blk.0.ffn_up");
    out.set(key, std::move(value));
    out.write(path_);
    EXPECT_THROW(load(), Error) << key;
  };
  const std::string prefix = "subbit.sketch.blk.0.ffn_up.";
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4, 9});      // 9 hash rows
  expect_refused(prefix + "config", std::vector<int64_t>{3, 8, 4, 3});      // rule 3
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 12, 3});     // 12-bit values
  expect_refused(prefix + "config", std::vector<int64_t>{0, 16, 4, 3});     // block size changed
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4});         // too short
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4, 3, -1});  // negative band rows
  expect_refused(prefix + "config",
                 std::vector<int64_t>{0, 8, 4, 3, 25});  // a band past the 24 rows
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4, 3, 0, 3});     // hash version 3
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4, 3, 0, 0});     // hash version 0
  expect_refused(prefix + "config", std::vector<int64_t>{0, 8, 4, 3, 0, 2, 1});  // too long
  expect_refused(prefix + "buckets", std::vector<int64_t>{0, 5, 5});             // empty table
  expect_refused(prefix + "buckets", std::vector<int64_t>{int64_t{1} << 40, 5, 5});  // huge table
  expect_refused(prefix + "seeds", std::vector<int64_t>{1, 2});               // a seed missing
  expect_refused(prefix + "salient_buckets", std::vector<int64_t>{4, 4, 4});  // no mask or tables
}

}  // namespace
}  // namespace subbit
