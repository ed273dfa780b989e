#include "compress/sensitivity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/tensors.h"

namespace subbit::compress {

namespace {

// Windows of `seq` tokens, four at a time: (batch, seq) int64.
std::vector<torch::Tensor> token_batches(std::span<const int32_t> tokens, int64_t seq) {
  const int64_t windows = int64_t(tokens.size()) / seq;
  if (windows < 1)
    fail("sensitivity: {} calibration tokens, fewer than one window of {}", tokens.size(), seq);
  std::vector<torch::Tensor> batches;
  for (int64_t w = 0; w < windows; w += 4) {
    const int64_t n = std::min<int64_t>(4, windows - w);
    torch::Tensor batch = torch::empty({n, seq}, torch::kInt64);
    auto a = batch.accessor<int64_t, 2>();
    for (int64_t b = 0; b < n; ++b)
      for (int64_t t = 0; t < seq; ++t) a[b][t] = tokens[(w + b) * seq + t];
    batches.push_back(batch);
  }
  return batches;
}

}  // namespace

std::vector<LayerSensitivity> measure_sensitivity(
    TorchLlama& teacher, const TrainableMethod& method, double target_bpw,
    std::span<const SizedTable> tables, std::span<const int32_t> tokens, int64_t seq,
    const std::function<void(const std::string&)>& log) {
  torch::NoGradGuard no_grad;
  const LlamaConfig& c = teacher.config();
  const std::vector<torch::Tensor> batches = token_batches(tokens, seq);
  std::vector<torch::Tensor> teacher_logp;  // per batch: (batch, seq, vocab)
  for (const torch::Tensor& b : batches)
    teacher_logp.push_back(torch::log_softmax(teacher.forward(b).logits, -1));
  const auto mean_kl = [&](TorchLlama& probe) {
    double sum = 0;
    int64_t positions = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      const torch::Tensor logp = torch::log_softmax(probe.forward(batches[i]).logits, -1);
      sum += (teacher_logp[i].exp() * (teacher_logp[i] - logp)).sum(-1).sum().item<double>();
      positions += batches[i].numel();
    }
    return sum / double(positions);
  };
  const double doubled = std::min(16.0, 2 * target_bpw);
  // The original model with one layer compressed at a time; it shares the teacher's weights.
  TorchLlama probe(teacher, TorchLlama::ShareFrozen{});
  std::vector<LayerSensitivity> layers;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const std::shared_ptr<TrainableLinear> kept = teacher.linear(l, i);
      const torch::Tensor w = std::dynamic_pointer_cast<FrozenDense>(kept)->weight();
      LayerSensitivity s{l, i, w.size(0), w.size(1), 0, 0, target_bpw};
      probe.set_linear(l, i, method.make_trainable(w, {l, i, target_bpw}));
      s.kl_at_target = mean_kl(probe);
      probe.set_linear(l, i, method.make_trainable(w, {l, i, doubled}));
      s.kl_at_double = mean_kl(probe);
      probe.set_linear(l, i, kept);
      layers.push_back(s);
    }
    log(fmt::format("sensitivity measured block {}/{}", l + 1, c.num_layers));
  }
  for (const SizedTable& t : tables) {
    const auto kl_at = [&](double bpw) {
      TorchLlama table_probe(teacher, TorchLlama::ShareFrozen{});
      std::shared_ptr<TrainableLinear> table =
          method.make_trainable(t.weight, {kOutsideBlocks, t.which, bpw});
      if (t.which == kEmbeddingTensor && !t.tied)
        table_probe.set_embedding(table->to_runtime());
      else
        table_probe.set_head(std::move(table), t.tied);
      return mean_kl(table_probe);
    };
    layers.push_back({kOutsideBlocks, t.which, t.weight.size(0), t.weight.size(1),
                      kl_at(target_bpw), kl_at(doubled), target_bpw});
    log(fmt::format("sensitivity measured the {}", t.which == kHeadTensor ? "LM head"
                                                   : t.tied           ? "tied embedding/head"
                                                                      : "embedding"));
  }
  return layers;
}

void allocate_by_sensitivity(std::vector<LayerSensitivity>& layers, const CompressMethod& method,
                             double target_bpw, double budget_bits) {
  const double low = target_bpw / 2, high = std::min(16.0, 2 * target_bpw);
  // Per layer D(B); one κ for all, from the totals at B and 2 B: single layers' KL at 2 B is
  // noisy (post-training LittleBit is not always better at a higher rank), and per-layer κ
  // fitted to that noise sent every bit to a few layers.
  std::vector<double> d(layers.size());
  double at_target = 0, at_double = 0;
  for (size_t j = 0; j < layers.size(); ++j) {
    d[j] = std::max(layers[j].kl_at_target, 1e-12);
    at_target += layers[j].kl_at_target;
    at_double += layers[j].kl_at_double;
  }
  const double kappa = std::max(0.05, std::log(at_target / std::max(at_double, 1e-12)));
  // D_j'(b) = −(κ / B) · D_j(b) = −λ · n_j  ⇒  b_j = B + (B / κ) · ln(κ D_j(B) / (λ n_j B)).
  const auto targets_for = [&](double log_lambda) {
    std::vector<double> b(layers.size());
    for (size_t j = 0; j < layers.size(); ++j) {
      const double n = double(layers[j].n_out * layers[j].n_in);
      const double x = target_bpw + target_bpw / kappa *
                                        (std::log(kappa * d[j] / (n * target_bpw)) - log_lambda);
      b[j] = std::clamp(x, low, high);
    }
    return b;
  };
  const auto stored_bits = [&](const std::vector<double>& b) {
    double bits = 0;
    for (size_t j = 0; j < layers.size(); ++j)
      bits += method.stored_bits(layers[j].n_out, layers[j].n_in, b[j]);
    return bits;
  };
  // Larger λ, fewer bits: the smallest λ (bisected in its log) whose targets fit.
  double lo = -200, hi = 200;
  if (stored_bits(targets_for(hi)) > budget_bits)
    fail("sensitivity: {} bits cannot hold every layer at {} bpw", budget_bits, low);
  for (int it = 0; it < 100; ++it) {
    const double mid = 0.5 * (lo + hi);
    (stored_bits(targets_for(mid)) <= budget_bits ? hi : lo) = mid;
  }
  const std::vector<double> b = targets_for(hi);
  for (size_t j = 0; j < layers.size(); ++j) layers[j].allocated_bpw = b[j];
}

}  // namespace subbit::compress
