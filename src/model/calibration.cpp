#include "model/calibration.h"

#include <cmath>

#include "common/error.h"

namespace subbit {

namespace {

// Accumulates the squares of every linear layer's input columns.
class ColumnSquares final : public LinearInputObserver {
 public:
  explicit ColumnSquares(const LlamaConfig& c) : sums_(c.num_layers), rows_(c.num_layers) {
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (int i = 0; i < kLinearsPerBlock; ++i) sums_[l][i].assign(linear_shape(c, i).second, 0.0);
  }
  void observe(int64_t layer, int index, const float* x, int64_t tokens, int64_t n_in) override {
    std::vector<double>& sum = sums_[layer][index];
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t i = 0; i < n_in; ++i) sum[i] += double(x[t * n_in + i]) * x[t * n_in + i];
    rows_[layer][index] += tokens;
  }
  ColumnRms rms() const {
    ColumnRms result(sums_.size());
    for (size_t l = 0; l < sums_.size(); ++l) {
      for (int i = 0; i < kLinearsPerBlock; ++i) {
        const std::vector<double>& sum = sums_[l][i];
        const double rows = double(std::max<int64_t>(rows_[l][i], 1));
        std::vector<float> column(sum.size());
        for (size_t j = 0; j < sum.size(); ++j) column[j] = float(std::sqrt(sum[j] / rows));
        result[l].push_back(std::move(column));
      }
    }
    return result;
  }

 private:
  std::vector<std::array<std::vector<double>, kLinearsPerBlock>> sums_;  // (layers, linears, n_in)
  std::vector<std::array<int64_t, kLinearsPerBlock>> rows_{};
};

}  // namespace

ColumnRms collect_column_rms(const LlamaModel& model, std::span<const int32_t> tokens,
                             int64_t ctx) {
  const LlamaConfig& c = model.config();
  ctx = std::min(ctx, max_context(c));
  if (int64_t(tokens.size()) < ctx)
    fail("calibration text has {} tokens, fewer than one window of {}", tokens.size(), ctx);
  ColumnSquares squares(c);
  RunState state(c, ctx);
  std::vector<float> logits(c.vocab_size);
  for (int64_t start = 0; start + ctx <= int64_t(tokens.size()); start += ctx)
    model.forward(tokens.subspan(start, ctx), 0, state, logits.data(), /*all_logits=*/false,
                  &squares);
  return squares.rms();
}

}  // namespace subbit
