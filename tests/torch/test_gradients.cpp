// Gradients of the trainable layers against finite differences, in double precision on tiny
// layers, and a check that the sign surrogate's gradient is alive (it flips signs).
//
// The layers' forward values are exact functions of their parameters only piecewise: sign() and
// the tables' quantizers are step functions whose training gradients are surrogates. The checks
// therefore use the structure of each forward pass:
//  - LittleBit is linear in each scale vector (h, g, l) and in each sign matrix S = sign(u):
//    central differences of the scales are exact, and flipping one sign changes the output by
//    exactly -2·sign(u_ij)·∂F/∂S_ij, so ∂F/∂S_ij is measured by a flip. The surrogate's gradient
//    must then be ∂F/∂S_ij · s'(u_ij), with s' written out here for tanh and the clipped STE.
//  - UltraSketch is linear in the quantized table values where the rule's choice of hash row does
//    not change: moving a latent value by one quantization step moves its quantized value by
//    exactly one step, so ±1-step differences measure ∂F/∂q, which the straight-through gradient
//    must equal.
#include <torch/torch.h>

#include <cmath>
#include <random>

#include "compress/littlebit.h"
#include "compress/sketch.h"
#include "formats/sketch.h"
#include "test_support.h"

namespace subbit {
namespace {

using namespace subbit::compress;

// Moves a module's parameters (and its floating-point buffers) to double, leaving index buffers
// alone. Parameters keep their identity, so the module's own handles see the new data.
void to_double(torch::nn::Module& module) {
  for (auto& p : module.named_parameters()) p.value().set_data(p.value().to(torch::kFloat64));
  for (auto& b : module.named_buffers())
    if (b.value().is_floating_point()) b.value().set_data(b.value().to(torch::kFloat64));
}

torch::Tensor parameter(torch::nn::Module& module, const std::string& name) {
  return module.named_parameters()[name];
}

// F = Σ R ⊙ forward(x): a scalar whose gradient reaches every output.
double objective(TrainableLinear& layer, const torch::Tensor& x, const torch::Tensor& r) {
  torch::NoGradGuard no_grad;
  return (layer.forward(x) * r).sum().item<double>();
}

torch::Tensor autograd_gradient(TrainableLinear& layer, const torch::Tensor& x,
                                const torch::Tensor& r, const std::string& name) {
  layer.zero_grad();
  (layer.forward(x) * r).sum().backward();
  return parameter(layer, name).grad().clone();
}

double surrogate_derivative(double x, SignSurrogate surrogate, double alpha) {
  if (surrogate == SignSurrogate::ClippedSte) return std::fabs(x) < 1.0 ? 1.0 : 0.0;
  const double t = std::tanh(alpha * x);
  return alpha * (1.0 - t * t);
}

struct LittleBitCase {
  SignSurrogate surrogate;
  double alpha;
  bool residual;
};

class LittleBitGradient : public ::testing::TestWithParam<LittleBitCase> {};

TEST_P(LittleBitGradient, MatchesFiniteDifferences) {
  const LittleBitCase c = GetParam();
  torch::manual_seed(3);
  const int64_t d_out = 9, d_in = 7, rank = 4;
  LittleBitTrainable layer(torch::randn({d_out, d_in}), rank, c.residual, c.surrogate, c.alpha);
  to_double(layer);
  {
    // Latent values where the surrogate's derivative is far from zero: tanh'(αu) needs |αu| of
    // order 1, the clipped STE |u| < 1 (some entries are put outside to check the clip).
    torch::NoGradGuard no_grad;
    const double spread = c.surrogate == SignSurrogate::Tanh ? 1.0 / c.alpha : 0.8;
    for (auto& p : layer.named_parameters())
      if (p.key().ends_with("_u") || p.key().ends_with("_v"))
        p.value().copy_(torch::randn_like(p.value()) * spread);
  }
  const torch::Tensor x = torch::randn({3, d_in}, torch::kFloat64);
  const torch::Tensor r = torch::randn({3, d_out}, torch::kFloat64);
  const double f0 = objective(layer, x, r);

  int checked_signs = 0, live_signs = 0;
  for (const std::string& path : c.residual ? std::vector<std::string>{"path0_", "path1_"}
                                            : std::vector<std::string>{"path0_"}) {
    // Scales: F is linear in each, so the central difference is exact up to rounding.
    for (const char* scale : {"h", "g", "l"}) {
      const std::string name = path + scale;
      const torch::Tensor grad = autograd_gradient(layer, x, r, name);
      torch::Tensor p = parameter(layer, name);
      for (int64_t i = 0; i < p.numel(); ++i) {
        const double eps = 1e-4, saved = p.view(-1)[i].item<double>();
        torch::NoGradGuard no_grad;
        p.view(-1)[i] = saved + eps;
        const double plus = objective(layer, x, r);
        p.view(-1)[i] = saved - eps;
        const double minus = objective(layer, x, r);
        p.view(-1)[i] = saved;
        const double expected = (plus - minus) / (2 * eps);
        EXPECT_NEAR(grad.view(-1)[i].item<double>(), expected, 1e-8 * (1 + std::fabs(expected)))
            << name << "[" << i << "]";
      }
    }
    // Signs: ∂F/∂S from a flip of the latent value, times the surrogate's derivative.
    for (const char* factor : {"u", "v"}) {
      const std::string name = path + factor;
      const torch::Tensor grad = autograd_gradient(layer, x, r, name);
      torch::Tensor p = parameter(layer, name);
      for (int64_t i = 0; i < p.numel(); ++i) {
        const double saved = p.view(-1)[i].item<double>();
        torch::NoGradGuard no_grad;
        p.view(-1)[i] = -saved;
        const double flipped = objective(layer, x, r);
        p.view(-1)[i] = saved;
        const double d_sign = (flipped - f0) / (saved >= 0 ? -2.0 : 2.0);
        const double expected = d_sign * surrogate_derivative(saved, c.surrogate, c.alpha);
        EXPECT_NEAR(grad.view(-1)[i].item<double>(), expected, 1e-9 * (1 + std::fabs(expected)))
            << name << "[" << i << "]";
        ++checked_signs;
        live_signs += std::fabs(expected) > 1e-6;
      }
    }
  }
  // Most latent entries must have had a gradient worth checking, or the test proves nothing.
  EXPECT_GT(live_signs, checked_signs / 2) << live_signs << " of " << checked_signs;
}

INSTANTIATE_TEST_SUITE_P(Surrogates, LittleBitGradient,
                         ::testing::Values(LittleBitCase{SignSurrogate::Tanh, 100, true},
                                           LittleBitCase{SignSurrogate::Tanh, 3, false},
                                           LittleBitCase{SignSurrogate::ClippedSte, 100, true}),
                         [](const ::testing::TestParamInfo<LittleBitCase>& info) {
                           const LittleBitCase& c = info.param;
                           return std::string(c.surrogate == SignSurrogate::Tanh ? "tanh" : "ste") +
                                  "_alpha" + std::to_string(int(c.alpha)) +
                                  (c.residual ? "_residual" : "_single");
                         });

// Trains only the latent sign factors (scales frozen) towards the output of the same layer with
// the smallest-magnitude signs of path 0's u negated: the loss can fall only if signs flip.
// Returns how many entries of u and v changed sign over a few Adam steps.
int64_t signs_flipped_while_training(SignSurrogate surrogate, double alpha) {
  torch::manual_seed(4);
  // Trained-weight scale (std 0.02), as in sb-8m: the Dual-SVID latents are then ~0.05, so
  // α = 100 leaves tanh'(αu) alive for part of them.
  const torch::Tensor w = torch::randn({48, 32}) * 0.02;
  LittleBitTrainable student(w, 8, true, surrogate, alpha), teacher(w, 8, true, surrogate, alpha);
  {
    torch::NoGradGuard no_grad;
    torch::Tensor u = parameter(teacher, "path0_u");
    const torch::Tensor smallest = std::get<1>(u.abs().view(-1).topk(24, 0, /*largest=*/false));
    u.view(-1).index_put_({smallest}, -u.view(-1).index({smallest}));
  }
  std::vector<torch::Tensor> latents, before;
  for (auto& p : student.named_parameters())
    if (p.key().ends_with("_u") || p.key().ends_with("_v")) {
      latents.push_back(p.value());
      before.push_back(p.value().detach().sign());
    }
  torch::optim::Adam optimizer(latents, torch::optim::AdamOptions(1e-2));
  const torch::Tensor x = torch::randn({64, 32});
  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    target = teacher.forward(x);
  }
  for (int step = 0; step < 10; ++step) {
    optimizer.zero_grad();
    (student.forward(x) - target).pow(2).mean().backward();
    optimizer.step();
  }
  int64_t flipped = 0;
  for (size_t i = 0; i < latents.size(); ++i)
    flipped += (latents[i].detach().sign() != before[i]).sum().item<int64_t>();
  return flipped;
}

TEST(SignSurrogate, GradientFlipsSigns) {
  for (auto [surrogate, alpha] :
       {std::pair{SignSurrogate::Tanh, 100.0}, {SignSurrogate::ClippedSte, 100.0}})
    EXPECT_GT(signs_flipped_while_training(surrogate, alpha), 0)
        << (surrogate == SignSurrogate::Tanh ? "tanh" : "ste");
  // The detector itself: with α = 1e9, tanh'(αu) underflows to 0 in fp32 for every latent value
  // of this layer, the sign gradient is dead, and no sign may change.
  EXPECT_EQ(signs_flipped_while_training(SignSurrogate::Tanh, 1e9), 0);
}

// The ablation baseline (--surrogate frozen): the same forward values as the trained surrogates,
// gradients for the scales only, and the latents are not parameters an optimizer would move.
TEST(SignSurrogate, FrozenSignsLeaveOnlyTheScalesTrainable) {
  torch::manual_seed(5);
  const torch::Tensor w = torch::randn({24, 16}) * 0.02;
  LittleBitTrainable frozen(w, 4, true, SignSurrogate::Frozen, 100),
      tanh(w, 4, true, SignSurrogate::Tanh, 100);
  const torch::Tensor x = torch::randn({8, 16});
  const torch::Tensor y = frozen.forward(x);
  EXPECT_TRUE(torch::equal(y, tanh.forward(x)));
  y.pow(2).sum().backward();
  for (auto& p : frozen.named_parameters()) {
    const bool latent = p.key().ends_with("_u") || p.key().ends_with("_v");
    EXPECT_EQ(p.value().requires_grad(), !latent) << p.key();
    EXPECT_EQ(p.value().grad().defined(), !latent) << p.key();
    if (!latent) {
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
  }
}

// ---------------------------------------------------------------------------------------------

struct SketchCase {
  SketchRule rule;
  int value_bits;
  bool salient;
};

class SketchGradient : public ::testing::TestWithParam<SketchCase> {};

TEST_P(SketchGradient, MatchesOneStepDifferences) {
  const SketchCase c = GetParam();
  const int64_t d_out = 6, d_in = 20;
  std::mt19937 rng(8);
  const auto w = testing::random_vector(d_out * d_in, rng);
  SketchParams p;
  p.rule = c.rule;
  p.rows = 2;
  p.block = 8;
  p.value_bits = c.value_bits;
  p.buckets = {5, 4};
  if (c.salient) {
    p.salient_blocks = 4;
    p.salient_buckets = {2, 2};
  }
  const auto encoded = SketchLinear::encode(w.data(), d_out, d_in, p, nullptr);
  SketchTrainable layer(*encoded);
  to_double(layer);
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({3, d_in}, torch::kFloat64);
  const torch::Tensor r = torch::randn({3, d_out}, torch::kFloat64);
  const double f0 = objective(layer, x, r);
  const double q_max = double((1 << (c.value_bits - 1)) - 1);

  int compared = 0, total = 0;
  for (int s = 0; s < encoded->sets(); ++s) {
    const SketchTableSet set = encoded->table_set(s);
    for (int k = 0; k < p.rows; ++k) {
      const std::string name = std::string(s == 0 ? "" : "salient_") + "table" + std::to_string(k);
      const torch::Tensor grad = autograd_gradient(layer, x, r, name);
      torch::Tensor table = parameter(layer, name);
      const double step = set.scales[k];
      for (int64_t i = 0; i < table.numel(); ++i) {
        const double saved = table.view(-1)[i].item<double>();
        const double code = std::nearbyint(saved / step);
        ++total;
        if (std::fabs(code) >= q_max) continue;  // a step outward would be clamped
        // A zero estimate ties in magnitude with a zero in another row: there the partial
        // derivatives are one-sided and the layer (like the runtime) credits the lowest row.
        if (c.rule != SketchRule::Mean && code == 0) continue;
        torch::NoGradGuard no_grad;
        table.view(-1)[i] = saved + step;
        const double plus = objective(layer, x, r);
        table.view(-1)[i] = saved - step;
        const double minus = objective(layer, x, r);
        table.view(-1)[i] = saved;
        // Unequal one-sided differences: a step changed which hash row the rule picks for some
        // weight, so F is not linear across this step; skip it.
        const double forward_d = (plus - f0) / step, backward_d = (f0 - minus) / step;
        if (std::fabs(forward_d - backward_d) > 1e-9 * (1 + std::fabs(forward_d))) continue;
        EXPECT_NEAR(grad.view(-1)[i].item<double>(), forward_d, 1e-9 * (1 + std::fabs(forward_d)))
            << name << "[" << i << "]";
        ++compared;
      }
    }
  }
  // The mean rule is linear everywhere. On these tiny 4-bit tables the min/max rules leave 13 of
  // 72 and 24 of 104 entries away from zero codes and choice changes (measured); ten must remain.
  if (c.rule == SketchRule::Mean)
    EXPECT_GE(compared * 10, total * 8) << compared << " of " << total;
  else
    EXPECT_GE(compared, 10) << compared << " of " << total;
}

INSTANTIATE_TEST_SUITE_P(Rules, SketchGradient,
                         ::testing::Values(SketchCase{SketchRule::Mean, 4, false},
                                           SketchCase{SketchRule::Mean, 8, true},
                                           SketchCase{SketchRule::AbsMinMax, 4, true},
                                           SketchCase{SketchRule::AbsMaxMin, 4, false},
                                           SketchCase{SketchRule::AbsMaxMin, 8, true}),
                         [](const ::testing::TestParamInfo<SketchCase>& info) {
                           const SketchCase& c = info.param;
                           return std::string(sketch_rule_name(c.rule)) + "_" +
                                  std::to_string(c.value_bits) + "bit" +
                                  (c.salient ? "_salient" : "");
                         });

}  // namespace
}  // namespace subbit
