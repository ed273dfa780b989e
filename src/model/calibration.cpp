#include "model/calibration.h"

#include <cmath>

#include "common/error.h"

namespace subbit {

namespace {

// Forwards to the wrapped layer and accumulates the squares of its input columns.
class RecordingLinear final : public Linear {
 public:
  RecordingLinear(std::unique_ptr<Linear> inner)
      : inner_(std::move(inner)), sum_squares_(inner_->n_in(), 0.0) {}
  int64_t n_in() const override { return inner_->n_in(); }
  int64_t n_out() const override { return inner_->n_out(); }
  void forward(const float* x, float* y, int64_t tokens) const override {
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t i = 0; i < n_in(); ++i) sum_squares_[i] += double(x[t * n_in() + i]) * x[t * n_in() + i];
    rows_ += tokens;
    inner_->forward(x, y, tokens);
  }
  void dequantize(float* w) const override { inner_->dequantize(w); }
  std::string format_name() const override { return inner_->format_name(); }
  int64_t storage_bits() const override { return inner_->storage_bits(); }
  void save(GgufWriter& out, const std::string& prefix) const override { inner_->save(out, prefix); }

  std::vector<float> column_rms() const {
    std::vector<float> rms(n_in());
    for (int64_t i = 0; i < n_in(); ++i) rms[i] = float(std::sqrt(sum_squares_[i] / double(std::max<int64_t>(rows_, 1))));
    return rms;
  }
  std::unique_ptr<Linear> release() { return std::move(inner_); }

 private:
  std::unique_ptr<Linear> inner_;
  mutable std::vector<double> sum_squares_;
  mutable int64_t rows_ = 0;
};

}  // namespace

ColumnRms collect_column_rms(LlamaModel& model, std::span<const int32_t> tokens, int64_t ctx) {
  const LlamaConfig& c = model.config();
  ctx = std::min(ctx, c.max_position_embeddings);
  if (int64_t(tokens.size()) < ctx) fail("calibration text has {} tokens, fewer than one window of {}", tokens.size(), ctx);
  LlamaWeights& w = model.mutable_weights();
  for (LlamaLayer& layer : w.layers)
    for (auto* slot : layer.linear_slots()) *slot = std::make_unique<RecordingLinear>(std::move(*slot));

  KVCache cache(c, ctx);
  std::vector<float> logits(c.vocab_size);
  for (int64_t start = 0; start + ctx <= int64_t(tokens.size()); start += ctx)
    model.forward(tokens.subspan(start, ctx), 0, cache, logits.data(), /*all_logits=*/false);

  ColumnRms result;
  for (LlamaLayer& layer : w.layers) {
    std::vector<std::vector<float>> per_linear;
    for (auto* slot : layer.linear_slots()) {
      auto* recording = static_cast<RecordingLinear*>(slot->get());
      per_linear.push_back(recording->column_rms());
      *slot = recording->release();
    }
    result.push_back(std::move(per_linear));
  }
  return result;
}

}  // namespace subbit
