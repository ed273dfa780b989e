// Bits by sensitivity (compress/sensitivity.h): the allocation moves bits toward the layers
// whose KL is larger per weight, never spends more than the budget, and on the real model the
// measured KL falls when a layer gets more bits.
#include <numeric>

#include "compress/methods.h"
#include "compress/sensitivity.h"
#include "model/loader.h"
#include "test_support.h"

namespace subbit {
namespace {

using namespace subbit::compress;

// Stores exactly the target (stored_bpw's default), so that budgets are exact.
class ExactMethod final : public CompressMethod {
 public:
  void add_options(CLI::App&) override {}
};

double stored(const std::vector<LayerSensitivity>& layers) {
  double bits = 0;
  for (const auto& s : layers) bits += s.allocated_bpw * double(s.n_out * s.n_in);
  return bits;
}

TEST(Sensitivity, MoreBitsWhereTheKlPerWeightIsLargerWithinTheBudget) {
  // Two equal layers, one 4x as sensitive; a third twice the size with the first one's KL.
  std::vector<LayerSensitivity> layers = {
      {0, 0, 64, 64, 0.4, 0.2, 0}, {0, 1, 64, 64, 0.1, 0.05, 0}, {0, 2, 128, 64, 0.4, 0.2, 0}};
  const double bpw = 0.5;
  const double budget = bpw * (64 * 64 * 2 + 128 * 64);
  allocate_by_sensitivity(layers, ExactMethod(), bpw, budget);
  EXPECT_LE(stored(layers), budget * (1 + 1e-9));
  EXPECT_GT(stored(layers), budget * 0.999);                    // the whole budget is used
  EXPECT_GT(layers[0].allocated_bpw, layers[2].allocated_bpw);  // same KL over twice the weights
  EXPECT_GT(layers[2].allocated_bpw, layers[1].allocated_bpw);
  for (const auto& s : layers) {
    EXPECT_GE(s.allocated_bpw, bpw / 2);
    EXPECT_LE(s.allocated_bpw, bpw * 2);
  }
  // Equal sensitivity per weight: uniform.
  std::vector<LayerSensitivity> equal = {{0, 0, 64, 64, 0.3, 0.1, 0}, {0, 1, 128, 64, 0.6, 0.2, 0}};
  allocate_by_sensitivity(equal, ExactMethod(), bpw, bpw * (64 * 64 + 128 * 64));
  for (const auto& s : equal) EXPECT_NEAR(s.allocated_bpw, bpw, 1e-6);
}

TEST(Sensitivity, MeasuredOnSb8mKlFallsWithBitsAndDeploysWithinTheUniformBits) {
  const auto dir = testing::shared_dir() / "models" / "sb-8m";
  SKIP_UNLESS_EXISTS(dir / "config.json");
  const ModelBundle bundle = load_hf_model(dir);
  TorchLlama teacher(*bundle.model);
  const auto method = find_compress_method("littlebit").make();
  const auto& trainable = dynamic_cast<const TrainableMethod&>(*method);
  std::vector<int32_t> tokens = bundle.tokenizer->encode(
      "The history of the city begins with a small settlement on the river, where traders met to "
      "exchange "
      "grain, salt and cloth. Over the following centuries the settlement grew into a market "
      "town.");
  while (tokens.size() < 256) tokens.insert(tokens.end(), tokens.begin(), tokens.end());
  tokens.resize(256);
  // sb-8m is tied: one table, compressed as embedding and head at once.
  const SizedTable table{kEmbeddingTensor, true, dense_weight(*bundle.model->weights().embedding)};
  std::vector<LayerSensitivity> layers = measure_sensitivity(
      teacher, trainable, 0.55, {&table, 1}, tokens, 128, [](const std::string&) {});
  ASSERT_EQ(layers.size(), size_t(bundle.model->config().num_layers * kLinearsPerBlock + 1));
  EXPECT_EQ(layers.back().block, kOutsideBlocks);
  EXPECT_EQ(layers.back().n_out, bundle.model->config().vocab_size);
  double at_target = 0, at_double = 0, budget = 0;
  for (const auto& s : layers) {
    EXPECT_GT(s.kl_at_target, 0) << s.block << " " << s.index;
    at_target += s.kl_at_target;
    at_double += s.kl_at_double;
    budget += method->stored_bpw(s.n_out, s.n_in, 0.55) * double(s.n_out * s.n_in);
  }
  EXPECT_LT(at_double, at_target);  // twice the bits: closer to the original overall
  allocate_by_sensitivity(layers, *method, 0.55, budget);
  double bits = 0;
  for (const auto& s : layers)
    bits += method->stored_bpw(s.n_out, s.n_in, s.allocated_bpw) * double(s.n_out * s.n_in);
  EXPECT_LE(bits, budget);
  const auto [least, most] = std::minmax_element(
      layers.begin(), layers.end(),
      [](const auto& a, const auto& b) { return a.allocated_bpw < b.allocated_bpw; });
  EXPECT_LT(least->allocated_bpw, most->allocated_bpw);  // not uniform
}

}  // namespace
}  // namespace subbit
