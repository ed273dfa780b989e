// The weight-format table: every row loads what its layers save, and unknown names are refused
// with every known one listed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "common/error.h"
#include "formats/format_table.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/sketch.h"
#include "ops/sign_matmul.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::dequantized;

constexpr int64_t kOut = 24, kIn = 100;  // awkward sizes: partial sign words, partial groups

// One small layer of every format in the table, by name.
std::map<std::string, std::unique_ptr<Linear>> sample_layers() {
  std::mt19937 rng(9);
  const std::vector<float> w = testing::random_vector(kOut * kIn, rng);
  std::map<std::string, std::unique_ptr<Linear>> layers;

  std::vector<uint8_t> bytes(w.size() * sizeof(float));
  std::memcpy(bytes.data(), w.data(), bytes.size());
  layers["dense"] =
      std::make_unique<DenseLinear>(DenseMatrix{DType::F32, nullptr, kOut, kIn}, std::move(bytes));

  const int64_t rank = 3;
  LittleBitPath path;
  path.rank = rank;
  path.u_signs.assign(kOut * sign_words_per_row(rank), 0x5ull);
  path.vt_signs.assign(rank * sign_words_per_row(kIn), 0x0F0F0F0F0F0F0F0Full);
  for (int64_t r = 0; r < rank; ++r)
    path.vt_signs[r * sign_words_per_row(kIn) + 1] &= (1ull << (kIn - 64)) - 1;
  path.h.assign(kOut, 0.5f);
  path.g.assign(kIn, 0.25f);
  path.l.assign(rank, 2.0f);
  layers["littlebit"] =
      std::make_unique<LittleBitLinear>(kOut, kIn, std::vector<LittleBitPath>{path});

  layers["sign"] = SignLinear::encode(w.data(), kOut, kIn);
  layers["rtn"] = RtnLinear::encode(w.data(), kOut, kIn, 3);
  SketchParams params = sketch_params_for_bpw(kOut, kIn, 3.0, 2, 8, 4, 0.1, 4);
  layers["sketch"] = SketchLinear::encode(w.data(), kOut, kIn, params, nullptr);
  return layers;
}

TEST(FormatTable, EveryRowLoadsWhatItsLayersSave) {
  auto layers = sample_layers();
  const auto dir = testing::temp_dir("formats");
  for (const LinearFormat& format : linear_formats()) {
    SCOPED_TRACE(std::string(format.name));
    const auto it = layers.find(std::string(format.name));
    ASSERT_NE(it, layers.end()) << "add a sample layer of every new format to sample_layers()";
    const Linear& layer = *it->second;
    EXPECT_EQ(layer.format_name(), format.name);
    GgufWriter out;
    layer.save(out, "blk.0.ffn_up");
    out.write(dir / "layer.gguf");
    const GgufFile file = GgufFile::open(dir / "layer.gguf");
    const auto loaded =
        find_linear_format(layer.format_name(), file).load(file, "blk.0.ffn_up", kOut, kIn);
    EXPECT_EQ(loaded->format_name(), format.name);
    EXPECT_EQ(loaded->storage_bits(), layer.storage_bits());
    EXPECT_EQ(dequantized(*loaded), dequantized(layer));
    layers.erase(it);
  }
  EXPECT_TRUE(layers.empty()) << layers.begin()->first << " has a sample layer but no row";
  std::filesystem::remove_all(dir);
}

TEST(FormatTable, UnknownFormatIsRefusedNamingTheFileAndEveryFormat) {
  const auto dir = testing::temp_dir("formats");
  GgufWriter out;
  out.set("general.name", std::string("empty"));
  out.write(dir / "empty.gguf");
  const GgufFile file = GgufFile::open(dir / "empty.gguf");
  EXPECT_EQ(find_linear_format("lattice"), nullptr);
  try {
    find_linear_format("lattice", file);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("empty.gguf"), std::string::npos) << message;
    EXPECT_NE(message.find("\"lattice\""), std::string::npos) << message;
    for (const LinearFormat& format : linear_formats())
      EXPECT_NE(message.find(format.name), std::string::npos) << message;
  }
  std::filesystem::remove_all(dir);
}

TEST(FormatTable, OnlyFormatsSizedByATargetExplainOvershoot) {
  for (const LinearFormat& format : linear_formats()) {
    SCOPED_TRACE(std::string(format.name));
    EXPECT_EQ(format.over_target_reason.empty(), format.over_target_slack == 1.0);
    EXPECT_GE(format.over_target_slack, 1.0);
  }
  EXPECT_EQ(find_linear_format("littlebit")->over_target_reason, "minimum rank");
  EXPECT_EQ(find_linear_format("sketch")->over_target_reason, "fixed costs");
  EXPECT_TRUE(find_linear_format("dense")->over_target_reason.empty());
}

}  // namespace
}  // namespace subbit

namespace subbit {
namespace {

// decode_row is how an embedding in any format is looked up: it must give the rows of the matrix
// the layer multiplies with, read here off forward() on the identity (column j = W · e_j).
TEST(FormatTable, DecodeRowGivesTheRowsTheProductUses) {
  auto layers = sample_layers();
  for (const LinearFormat& format : linear_formats()) {
    SCOPED_TRACE(std::string(format.name));
    const Linear& layer = *layers.at(std::string(format.name));
    std::vector<float> identity(kIn * kIn, 0.0f), columns(kIn * kOut);  // (tokens = kIn, n_out)
    for (int64_t j = 0; j < kIn; ++j) identity[j * kIn + j] = 1.0f;
    Scratch scratch;
    layer.forward(identity.data(), columns.data(), kIn, scratch);
    std::vector<float> row(kIn);
    double worst = 0, largest = 0;
    for (int64_t r : {int64_t{0}, int64_t{7}, kOut - 1}) {
      layer.decode_row(r, row.data());
      for (int64_t j = 0; j < kIn; ++j) {
        worst = std::max(worst, double(std::abs(row[j] - columns[j * kOut + r])));
        largest = std::max(largest, double(std::abs(row[j])));
      }
    }
    EXPECT_GT(largest, 0.0);
    EXPECT_LE(worst, 1e-5 * largest);
  }
}

}  // namespace
}  // namespace subbit
