// UltraSketch QAT: the trainable module computes what the runtime layer computes, training
// lowers a layer-output loss, and the trained module deploys unchanged.
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <random>

#include "compress/sketch.h"
#include "formats/sketch.h"
#include "test_support.h"

namespace subbit {
namespace {

using compress::dense_weight;
using compress::SketchTrainable;

torch::Tensor runtime_forward(const Linear& layer, const torch::Tensor& x) {
  const torch::Tensor in = x.contiguous();
  torch::Tensor out = torch::empty({x.size(0), layer.n_out()});
  Scratch scratch;
  layer.forward(in.data_ptr<float>(), out.data_ptr<float>(), x.size(0), scratch);
  return out;
}

std::unique_ptr<SketchLinear> encode(const torch::Tensor& w, SketchParams p) {
  const torch::Tensor c = w.contiguous();
  return SketchLinear::encode(c.data_ptr<float>(), w.size(0), w.size(1), p, nullptr);
}

// The module must reproduce the runtime weights bit for bit (same hashes, same quantizer, same
// selection order); the products differ only in fp32 summation order.
void expect_same_as_runtime(SketchTrainable& module, const Linear& layer, const torch::Tensor& x,
                            const std::string& what) {
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(module.weight(), dense_weight(layer))) << what;
  const torch::Tensor expected = runtime_forward(layer, x);
  const double error = (module.forward(x) - expected).abs().max().item<double>();
  EXPECT_LT(error, 1e-5 * (1 + expected.abs().max().item<double>())) << what;
}

TEST(SketchTrainable, ForwardEqualsRuntimeLayer) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({37, 90});
  const torch::Tensor x = torch::randn({6, 90});
  for (SketchRule rule : {SketchRule::AbsMinMax, SketchRule::AbsMaxMin, SketchRule::Mean})
    for (int rows : {1, 2, 3})
      // Row bands of at least 4 buckets, or plain hashing (band_buckets 0).
      for (auto [block, value_bits, salient, band_buckets] : {std::tuple{16, 4, 0.0, int64_t{4}},
                                                              {8, 16, 0.1, int64_t{0}},
                                                              {5, 3, 0.2, int64_t{4}}}) {
        SketchParams p =
            sketch_params_for_bpw(37, 90, 2.0, rows, block, value_bits, salient, band_buckets);
        p.rule = rule;
        const auto layer = encode(w, p);
        SketchTrainable module(*layer);
        expect_same_as_runtime(
            module, *layer, x,
            fmt::format("{} rows {} {}", sketch_rule_name(rule), rows, layer->describe()));
      }
}

TEST(SketchTrainable, AdamLowersTheLayerOutputLossAndDeploysUnchanged) {
  torch::manual_seed(1);
  const int64_t d_out = 64, d_in = 128;
  const torch::Tensor w = torch::randn({d_out, d_in}) / std::sqrt(double(d_in));
  const torch::Tensor x = torch::randn({256, d_in});
  const torch::Tensor target = torch::matmul(x, w.t());
  const auto layer = encode(w, sketch_params_for_bpw(d_out, d_in, 1.0, 2, 16, 4, 0.05));
  SketchTrainable module(*layer);

  torch::optim::Adam optimizer(module.parameters(), torch::optim::AdamOptions(2e-3));
  auto loss_now = [&] { return torch::mse_loss(module.forward(x), target); };
  const double initial = loss_now().item<double>();
  for (int step = 0; step < 30; ++step) {
    optimizer.zero_grad();
    torch::Tensor loss = loss_now();
    loss.backward();
    optimizer.step();
  }
  const double trained = loss_now().item<double>();
  EXPECT_LT(trained, 0.95 * initial) << "initial " << initial << ", trained " << trained;

  // Only the parameters moved: the deployed layer has the same structure and size.
  const auto deployed = module.to_runtime();
  EXPECT_EQ(deployed->storage_bits(), layer->storage_bits());
  EXPECT_EQ(deployed->describe(), layer->describe());
  expect_same_as_runtime(module, *deployed, x, "after training");
}

TEST(SketchTrainable, GradientReachesOnlyTheBucketsThatWereRead) {
  torch::manual_seed(2);
  const torch::Tensor w = torch::randn({4, 16});
  // One block per row, 64 buckets: at most 4 buckets per hash row are read. The mean rule
  // reads every row, so every table gets gradient.
  SketchParams p;
  p.rule = SketchRule::Mean;
  p.rows = 2;
  p.block = 16;
  p.value_bits = 8;
  p.buckets = {64, 64};
  const auto layer = encode(w, p);
  SketchTrainable module(*layer);
  module.forward(torch::randn({3, 16})).sum().backward();
  for (const torch::Tensor& table : module.parameters()) {
    const int64_t touched = (table.grad().abs().sum(1) > 0).sum().item<int64_t>();
    EXPECT_GE(touched, 1);
    EXPECT_LE(touched, 4);
  }
}

}  // namespace
}  // namespace subbit
