#include "model/perplexity.h"

#include <cmath>

#include "common/error.h"

namespace subbit {

double token_nll(const float* logits, int64_t vocab, int32_t target) {
  float max_logit = logits[0];
  for (int64_t i = 1; i < vocab; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - max_logit);
  return std::log(sum) + max_logit - logits[target];
}

PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     int64_t ctx, int64_t max_windows,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  const LlamaConfig& c = model.config();
  if (ctx < 2) fail("--ctx must be at least 2, got {}", ctx);
  if (ctx > max_context(c))
    fail("--ctx {} exceeds the model's maximum context of {}", ctx, max_context(c));
  int64_t windows = int64_t(tokens.size()) / ctx;
  if (windows == 0)
    fail("the text has {} tokens, fewer than one window of --ctx {}", tokens.size(), ctx);
  if (max_windows > 0) windows = std::min(windows, max_windows);

  RunState state(c, ctx);
  std::vector<float> logits(ctx * c.vocab_size);  // (ctx, vocab)
  double sum = 0, sum_sq = 0;
  int64_t scored = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const auto window = tokens.subspan(w * ctx, ctx);
    model.forward(window, 0, state, logits.data(), /*all_logits=*/true);
    for (int64_t p = 1; p < ctx; ++p) {
      const double nll = token_nll(logits.data() + (p - 1) * c.vocab_size, c.vocab_size, window[p]);
      sum += nll;
      sum_sq += nll * nll;
      ++scored;
    }
    if (progress) progress(w + 1, windows);
  }
  const double mean = sum / double(scored);
  const double variance = std::max(0.0, sum_sq / double(scored) - mean * mean);
  return {std::exp(mean), mean, std::sqrt(variance / double(scored)), scored,
          int64_t(tokens.size()), ctx, windows};
}

}  // namespace subbit
