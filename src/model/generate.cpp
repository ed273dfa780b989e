#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace subbit {

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (params_.temperature <= 0.0f)
    return int32_t(std::max_element(logits, logits + vocab) - logits);
  const int64_t candidates = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const auto more_likely = [&](int32_t a, int32_t b) { return logits[a] > logits[b]; };
  if (candidates == vocab)
    std::sort(order.begin(), order.end(), more_likely);
  else
    std::partial_sort(order.begin(), order.begin() + candidates, order.end(), more_likely);
  std::vector<double> probs(candidates);
  double total = 0;
  for (int64_t i = 0; i < candidates; ++i) {
    probs[i] = std::exp(double(logits[order[i]] - logits[order[0]]) / params_.temperature);
    total += probs[i];
  }
  // Keep the smallest prefix of the sorted distribution whose mass reaches top_p.
  int64_t keep = 0;
  double mass = 0;
  while (keep < candidates && (keep == 0 || mass < params_.top_p * total)) mass += probs[keep++];
  std::uniform_real_distribution<double> uniform(0.0, mass);
  double r = uniform(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    r -= probs[i];
    if (r <= 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(const LlamaModel& model, std::span<const int32_t> prompt,
                              int64_t max_new_tokens, SamplingParams params,
                              std::optional<int32_t> stop_token,
                              const std::function<void(int32_t)>& on_token,
                              GenerationStats* stats) {
  using Clock = std::chrono::steady_clock;
  const LlamaConfig& c = model.config();
  if (prompt.empty()) fail("the prompt is empty (no tokens to start from)");
  const int64_t capacity = int64_t(prompt.size()) + max_new_tokens;
  if (capacity > max_context(c))
    fail("prompt ({} tokens) + -n {} exceeds the model's maximum context of {}", prompt.size(),
         max_new_tokens, max_context(c));
  RunState state(c, capacity);
  Sampler sampler(params);
  std::vector<float> logits(c.vocab_size);
  std::vector<int32_t> out;

  const auto t0 = Clock::now();
  model.forward(prompt, 0, state, logits.data(), /*all_logits=*/false);
  const auto t1 = Clock::now();
  int64_t position = int64_t(prompt.size());
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    const int32_t next = sampler.sample(logits.data(), c.vocab_size);
    out.push_back(next);
    if (on_token) on_token(next);
    if (stop_token && next == *stop_token) break;
    if (i + 1 == max_new_tokens) break;
    model.forward(std::span<const int32_t>(&next, 1), position++, state, logits.data(), false);
  }
  const auto t2 = Clock::now();
  if (stats != nullptr) {
    stats->prompt_tokens = int64_t(prompt.size());
    stats->generated_tokens = int64_t(out.size());
    stats->prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
    stats->generation_seconds = std::chrono::duration<double>(t2 - t1).count();
  }
  return out;
}

}  // namespace subbit
