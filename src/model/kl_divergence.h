#pragma once
// KL-divergence of a model's next-token distributions from a reference model's (like
// llama-perplexity --kl-divergence): at every position the perplexity protocol scores,
// KLD = KL(P_reference || Q_model) = sum_i p_i (log p_i - log q_i), in nats. The reference is
// either a second model run window by window beside the first (exact), or a saved base file
// holding each position's top-k reference log-probabilities and the log of the remaining mass
// (docs/kl-divergence.md). From a base file the KLD is that of the two distributions coarsened
// to (the k tokens, everything else): by the log-sum inequality a lower bound on the exact
// KLD, equal to it when the top k hold all the reference's mass (k >= vocab). Top-1 agreement,
// the reference's perplexity and everything else are exact either way.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "io/atomic_file.h"
#include "io/mapped_file.h"
#include "model/llama.h"
#include "model/perplexity.h"

namespace subbit {

struct KldResult {
  int64_t scored_tokens = 0;
  int64_t text_tokens = 0;
  int64_t ctx = 0;
  int64_t windows = 0;
  int64_t top_k = 0;                    // 0: exact (reference model); else the base file's k
  double kld_mean = 0, kld_stderr = 0;  // standard error of the mean over scored tokens
  double kld_median = 0, kld_p90 = 0, kld_p99 = 0, kld_p999 = 0, kld_max = 0;
  double top1_agreement = 0, top1_stderr = 0;  // fraction of positions with the same argmax
  double nll_mean = 0, nll_stderr = 0;         // the model's
  double reference_nll_mean = 0, reference_nll_stderr = 0;
  double ppl = 0, reference_ppl = 0;
  double ppl_ratio = 0;  // ppl / reference_ppl
  // mean over tokens of NLL_model - NLL_reference = ln(ppl_ratio), with its standard error
  // (paired, so much smaller than the two perplexities' own errors).
  double ln_ppl_ratio_stderr = 0;
  double reference_rest_mass = 0;  // mean reference probability outside the stored top k
};

// One position's comparison of a model against the reference.
struct PositionKld {
  double kld;
  bool same_top1;
  double nll;            // the model's -log q(target)
  double reference_nll;  // the reference's -log p(target)
  double rest_mass;      // reference probability not covered by the stored top k (0 if exact)
};

// Exact, from two rows of logits over the same vocabulary; computed in double.
PositionKld position_kld(const float* reference_logits, const float* model_logits, int64_t vocab,
                         int32_t target);

// A reference distribution at one position as a base file stores it.
struct CompactLogProbs {
  float target_log_prob;             // log p(target)
  float rest_log_mass;               // log of the mass outside the top k; -inf when there is none
  std::span<const int32_t> ids;      // the top k token ids, most probable first
  std::span<const float> log_probs;  // their log-probabilities, non-increasing
};

// Against a compact reference: KL of the distributions coarsened to (top k, rest).
PositionKld position_kld(const CompactLogProbs& reference, const float* model_logits, int64_t vocab,
                         int32_t target);

// Gathers per-position results; finish() computes the summary statistics.
class KldAccumulator {
 public:
  void add(const PositionKld& p);
  KldResult finish() const;  // fills the statistics fields (not text_tokens, ctx, windows, top_k)

 private:
  std::vector<float> klds_;  // for the median and percentiles
  double kld_sum_ = 0, kld_sum_sq_ = 0;
  double nll_sum_ = 0, nll_sum_sq_ = 0, ref_sum_ = 0, ref_sum_sq_ = 0;
  double diff_sum_ = 0, diff_sum_sq_ = 0;
  double rest_sum_ = 0;
  int64_t same_top1_ = 0;
};

// Linear-interpolation percentile (numpy's default) of sorted values, q in [0, 1].
double sorted_percentile(std::span<const float> sorted, double q);

// Saved reference distributions (`subbit ppl REF --save-logits FILE`). Layout in
// docs/kl-divergence.md: a header (magic, version, top_k, vocab, ctx, windows), then per window
// its ctx token ids followed by ctx-1 position records.
class KldBaseWriter {
 public:
  // Opens the output atomically: nothing appears at `path` unless commit() runs.
  KldBaseWriter(const std::filesystem::path& path, int64_t vocab, int64_t ctx, int64_t windows,
                int64_t top_k);
  // Suits ChunkObserver: chunks arrive in order, window by window.
  void add_chunk(int64_t window, std::span<const int32_t> window_tokens, int64_t first,
                 int64_t count, const float* logits);
  void commit();  // fails unless every window was written
  int64_t top_k() const { return top_k_; }

 private:
  std::filesystem::path path_;
  AtomicFile out_;
  int64_t vocab_, ctx_, windows_, top_k_;
  int64_t positions_written_ = 0;
  std::vector<uint8_t> record_;
  std::vector<int32_t> order_;
};

class KldBase {
 public:
  // Maps the file and validates its header and size; records are validated as they are read.
  explicit KldBase(const std::filesystem::path& path);
  int64_t vocab_size() const { return vocab_; }
  int64_t ctx() const { return ctx_; }
  int64_t windows() const { return windows_; }
  int64_t top_k() const { return top_k_; }
  const std::filesystem::path& path() const { return file_.path(); }

  std::span<const int32_t> window_tokens(int64_t window) const;
  // The record of window `window`, position p (0..ctx-2: the distribution predicting token p+1).
  // Throws Error naming the file, window and position when the record is malformed.
  CompactLogProbs position(int64_t window, int64_t p);

 private:
  MappedFile file_;
  int64_t vocab_ = 0, ctx_ = 0, windows_ = 0, top_k_ = 0;
  std::vector<uint8_t> seen_;  // per token id, for the duplicate-id check
};

using WindowProgress = std::function<void(int64_t, int64_t)>;

// KLD against a reference model run on the same windows (exact).
KldResult evaluate_kl_divergence(const LlamaModel& model, const LlamaModel& reference,
                                 std::span<const int32_t> tokens, int64_t ctx, int64_t max_windows,
                                 const WindowProgress& progress = {});
// KLD against a saved base: ctx is the base's; the base's windows must hold the text's tokens.
KldResult evaluate_kl_divergence(const LlamaModel& model, KldBase& base,
                                 std::span<const int32_t> tokens, int64_t max_windows,
                                 const WindowProgress& progress = {});

}  // namespace subbit
