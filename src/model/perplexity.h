#pragma once
// Perplexity with the protocol of the golden references: the whole text tokenized without BOS,
// non-overlapping windows of ctx tokens, every position but the first of each window scored,
// ppl = exp(mean NLL).
#include <cstdint>
#include <functional>
#include <span>

#include "model/llama.h"

namespace subbit {

struct PerplexityResult {
  double ppl;
  double nll_mean;
  double nll_stderr;  // standard error of the mean NLL
  int64_t scored_tokens;
  int64_t text_tokens;
  int64_t ctx;
  int64_t windows;
};

// progress(windows_done, windows_total) is called after each window.
PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     int64_t ctx, int64_t max_windows,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

// -log softmax(logits)[target], computed stably in double.
double token_nll(const float* logits, int64_t vocab, int32_t target);

}  // namespace subbit
