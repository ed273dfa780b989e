#pragma once
// Perplexity with the protocol of the golden references: the whole text tokenized without BOS,
// non-overlapping windows of ctx tokens, every position but the first of each window scored,
// ppl = exp(mean NLL).
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

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

// Windows are fed to the model in chunks of at most this many tokens, so the logits buffer is
// (chunk, vocab) rather than (ctx, vocab): 251 MiB instead of 4 GiB for a 128256-entry vocabulary
// at ctx 8192. The logits are the same as from one pass over the whole window (causal attention).
inline constexpr int64_t kScoringChunk = 512;

// Number of windows of `ctx` tokens to score in a text of `text_tokens` tokens (at most
// max_windows when > 0). Fails with a clear message when ctx < 2 or the text is too short.
int64_t count_windows(int64_t text_tokens, int64_t ctx, int64_t max_windows);

// One model's pass over one window at a time: logits(window, first, count) returns the logits
// (count, vocab) of window positions first..first+count-1, the row of position p predicting
// token p+1. Chunks of a window must be asked for in order, starting at position 0.
class WindowLogits {
 public:
  WindowLogits(const LlamaModel& model, int64_t ctx);
  const float* logits(std::span<const int32_t> window, int64_t first, int64_t count);

 private:
  const LlamaModel& model_;
  RunState cache_;
  std::vector<float> logits_;  // (kScoringChunk, vocab)
};

// Called for each scored chunk: window index, the window's tokens, the first position and
// count of the chunk, and its logits (count, vocab). Positions run over 0..ctx-2: the logits
// that predict the scored tokens 1..ctx-1.
using ChunkObserver = std::function<void(int64_t window, std::span<const int32_t> window_tokens,
                                         int64_t first, int64_t count, const float* logits)>;

// progress(windows_done, windows_total) is called after each window.
PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens,
                                     int64_t ctx, int64_t max_windows,
                                     const std::function<void(int64_t, int64_t)>& progress = {},
                                     const ChunkObserver& observer = {});

// -log softmax(logits)[target], computed stably in double.
double token_nll(const float* logits, int64_t vocab, int32_t target);

}  // namespace subbit
