#include "model/perplexity.h"

#include <algorithm>
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

int64_t count_windows(int64_t text_tokens, int64_t ctx, int64_t max_windows) {
  if (ctx < 2) fail("--ctx must be at least 2, got {}", ctx);
  int64_t windows = text_tokens / ctx;
  if (windows == 0)
    fail("the text has {} tokens, fewer than one window of --ctx {}", text_tokens, ctx);
  if (max_windows > 0) windows = std::min(windows, max_windows);
  return windows;
}

WindowLogits::WindowLogits(const LlamaModel& model, int64_t ctx)
    : model_(model),
      cache_(model.config(), ctx),
      logits_(std::min(ctx, kScoringChunk) * model.config().vocab_size) {}

const float* WindowLogits::logits(std::span<const int32_t> window, int64_t first, int64_t count) {
  if (count > kScoringChunk)
    fail("internal: a scoring chunk of {} tokens exceeds {}", count, kScoringChunk);
  model_.forward(window.subspan(first, count), first, cache_, logits_.data(), /*all_logits=*/true);
  return logits_.data();
}

PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     int64_t ctx, int64_t max_windows,
                                     const std::function<void(int64_t, int64_t)>& progress,
                                     const ChunkObserver& observer) {
  const LlamaConfig& c = model.config();
  if (ctx > max_context(c))
    fail("--ctx {} exceeds the model's maximum context of {}", ctx, max_context(c));
  const int64_t windows = count_windows(int64_t(tokens.size()), ctx, max_windows);

  WindowLogits runner(model, ctx);
  double sum = 0, sum_sq = 0;
  int64_t scored = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const auto window = tokens.subspan(w * ctx, ctx);
    // The last token is only a target: its own logits predict nothing that is scored.
    for (int64_t first = 0; first < ctx - 1; first += kScoringChunk) {
      const int64_t count = std::min(kScoringChunk, ctx - 1 - first);
      const float* logits = runner.logits(window, first, count);
      for (int64_t i = 0; i < count; ++i) {
        const double nll =
            token_nll(logits + i * c.vocab_size, c.vocab_size, window[first + i + 1]);
        sum += nll;
        sum_sq += nll * nll;
        ++scored;
      }
      if (observer) observer(w, window, first, count, logits);
    }
    if (progress) progress(w + 1, windows);
  }
  const double mean = sum / double(scored);
  const double variance = std::max(0.0, sum_sq / double(scored) - mean * mean);
  return {std::exp(mean),
          mean,
          std::sqrt(variance / double(scored)),
          scored,
          int64_t(tokens.size()),
          ctx,
          windows};
}

}  // namespace subbit
