#include "model/kl_divergence.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace subbit {

static_assert(std::endian::native == std::endian::little,
              "the base file is little-endian and read in place");

namespace {

constexpr char kMagic[8] = {'S', 'B', 'K', 'L', 'B', 'A', 'S', 'E'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + 8 + 8;
// Log-probabilities are computed in double and stored as float: a stored value may round to a
// hair above 0 and a distribution's total to a hair off 1.
constexpr double kLogProbSlack = 1e-5;
constexpr double kMassSlack = 1e-3;

size_t record_bytes(int64_t top_k) { return 8 + 8 * size_t(top_k); }
size_t window_bytes(int64_t ctx, int64_t top_k) {
  return 4 * size_t(ctx) + size_t(ctx - 1) * record_bytes(top_k);
}

// max and log(sum exp) of a logit row, in double.
struct LogNormalizer {
  double max_logit;
  double log_sum;  // log sum exp(l_i - max)
  double log_prob(float logit) const { return double(logit) - max_logit - log_sum; }
};

LogNormalizer normalizer(const float* logits, int64_t vocab) {
  float m = logits[0];
  for (int64_t i = 1; i < vocab; ++i) m = std::max(m, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - m);
  return {double(m), std::log(sum)};
}

int64_t argmax(const float* logits, int64_t vocab) {
  return std::max_element(logits, logits + vocab) - logits;
}

double mean_stderr(double sum, double sum_sq, int64_t n, double* mean_out) {
  const double mean = sum / double(n);
  *mean_out = mean;
  if (n < 2) return 0;
  const double variance = std::max(0.0, (sum_sq - double(n) * mean * mean) / double(n - 1));
  return std::sqrt(variance / double(n));
}

template <typename T>
void put(std::vector<uint8_t>& out, size_t offset, const T& value) {
  std::memcpy(out.data() + offset, &value, sizeof value);
}

}  // namespace

PositionKld position_kld(const float* reference_logits, const float* model_logits, int64_t vocab,
                         int32_t target) {
  const LogNormalizer p = normalizer(reference_logits, vocab), q = normalizer(model_logits, vocab);
  double kld = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double lp = p.log_prob(reference_logits[i]);
    kld += std::exp(lp) * (lp - q.log_prob(model_logits[i]));
  }
  return {std::max(0.0, kld), argmax(reference_logits, vocab) == argmax(model_logits, vocab),
          -q.log_prob(model_logits[target]), -p.log_prob(reference_logits[target]), 0.0};
}

PositionKld position_kld(const CompactLogProbs& ref, const float* model_logits, int64_t vocab,
                         int32_t target) {
  const LogNormalizer q = normalizer(model_logits, vocab);
  double kld = 0, model_top_mass = 0;
  for (size_t i = 0; i < ref.ids.size(); ++i) {
    const double lp = ref.log_probs[i], lq = q.log_prob(model_logits[ref.ids[i]]);
    kld += std::exp(lp) * (lp - lq);
    model_top_mass += std::exp(lq);
  }
  const double rest = std::exp(double(ref.rest_log_mass));
  if (rest > 0) {
    // The model's mass outside the reference's top k, floored so a model that puts all its mass
    // on those k tokens gives a large finite KLD rather than infinity.
    const double model_rest = std::max(1.0 - model_top_mass, 1e-300);
    kld += rest * (double(ref.rest_log_mass) - std::log(model_rest));
  }
  const bool same_top1 = !ref.ids.empty() && argmax(model_logits, vocab) == ref.ids[0];
  return {std::max(0.0, kld), same_top1, -q.log_prob(model_logits[target]),
          -double(ref.target_log_prob), rest};
}

void KldAccumulator::add(const PositionKld& p) {
  klds_.push_back(float(p.kld));
  kld_sum_ += p.kld;
  kld_sum_sq_ += p.kld * p.kld;
  nll_sum_ += p.nll;
  nll_sum_sq_ += p.nll * p.nll;
  ref_sum_ += p.reference_nll;
  ref_sum_sq_ += p.reference_nll * p.reference_nll;
  const double diff = p.nll - p.reference_nll;
  diff_sum_ += diff;
  diff_sum_sq_ += diff * diff;
  rest_sum_ += p.rest_mass;
  same_top1_ += p.same_top1;
}

double sorted_percentile(std::span<const float> sorted, double q) {
  if (sorted.empty()) return 0;
  const double position = q * double(sorted.size() - 1);
  const size_t below = size_t(std::floor(position));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = position - double(below);
  return double(sorted[below]) * (1 - fraction) + double(sorted[above]) * fraction;
}

KldResult KldAccumulator::finish() const {
  KldResult r;
  const int64_t n = int64_t(klds_.size());
  if (n == 0) fail("no positions were scored");
  r.scored_tokens = n;
  r.kld_stderr = mean_stderr(kld_sum_, kld_sum_sq_, n, &r.kld_mean);
  std::vector<float> sorted = klds_;
  std::sort(sorted.begin(), sorted.end());
  r.kld_median = sorted_percentile(sorted, 0.5);
  r.kld_p90 = sorted_percentile(sorted, 0.9);
  r.kld_p99 = sorted_percentile(sorted, 0.99);
  r.kld_p999 = sorted_percentile(sorted, 0.999);
  r.kld_max = sorted.back();
  r.top1_agreement = double(same_top1_) / double(n);
  r.top1_stderr = std::sqrt(r.top1_agreement * (1 - r.top1_agreement) / double(n));
  r.nll_stderr = mean_stderr(nll_sum_, nll_sum_sq_, n, &r.nll_mean);
  r.reference_nll_stderr = mean_stderr(ref_sum_, ref_sum_sq_, n, &r.reference_nll_mean);
  double ln_ratio = 0;
  r.ln_ppl_ratio_stderr = mean_stderr(diff_sum_, diff_sum_sq_, n, &ln_ratio);
  r.ppl = std::exp(r.nll_mean);
  r.reference_ppl = std::exp(r.reference_nll_mean);
  r.ppl_ratio = std::exp(ln_ratio);
  r.reference_rest_mass = rest_sum_ / double(n);
  return r;
}

KldBaseWriter::KldBaseWriter(const std::filesystem::path& path, int64_t vocab, int64_t ctx,
                             int64_t windows, int64_t top_k)
    : path_(path),
      out_(path),
      vocab_(vocab),
      ctx_(ctx),
      windows_(windows),
      top_k_(std::clamp<int64_t>(top_k, 1, vocab)),
      record_(record_bytes(top_k_)),
      order_(vocab) {
  if (top_k < 1)
    fail("{}: the number of saved log-probabilities per token must be at least 1, got {}",
         path.string(), top_k);
  std::vector<uint8_t> header(kHeaderBytes);
  std::memcpy(header.data(), kMagic, sizeof kMagic);
  put(header, 8, kVersion);
  put(header, 12, uint32_t(top_k_));
  put(header, 16, uint64_t(vocab));
  put(header, 24, uint64_t(ctx));
  put(header, 32, uint64_t(windows));
  out_.write(header.data(), header.size());
}

void KldBaseWriter::add_chunk(int64_t window, std::span<const int32_t> window_tokens, int64_t first,
                              int64_t count, const float* logits) {
  if (window * (ctx_ - 1) + first != positions_written_)
    fail("{}: internal: chunk of window {} at position {} out of order", path_.string(), window,
         first);
  if (first == 0) out_.write(window_tokens.data(), window_tokens.size() * sizeof(int32_t));
  for (int64_t i = 0; i < count; ++i) {
    const float* row = logits + i * vocab_;
    const LogNormalizer norm = normalizer(row, vocab_);
    std::iota(order_.begin(), order_.end(), 0);
    const auto by_logit = [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    };
    std::partial_sort(order_.begin(), order_.begin() + top_k_, order_.end(), by_logit);
    // The rest's mass summed directly (not 1 - top mass) keeps it accurate when it is tiny.
    double rest = 0;
    for (int64_t j = top_k_; j < vocab_; ++j) rest += std::exp(norm.log_prob(row[order_[j]]));
    const int32_t target = window_tokens[first + i + 1];
    put(record_, 0, float(norm.log_prob(row[target])));
    put(record_, 4, rest > 0 ? float(std::log(rest)) : -std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < top_k_; ++j) {
      put(record_, 8 + 4 * j, order_[j]);
      put(record_, 8 + 4 * (top_k_ + j), float(norm.log_prob(row[order_[j]])));
    }
    out_.write(record_.data(), record_.size());
  }
  positions_written_ += count;
}

void KldBaseWriter::commit() {
  if (positions_written_ != windows_ * (ctx_ - 1))
    fail("{}: internal: {} of {} positions written", path_.string(), positions_written_,
         windows_ * (ctx_ - 1));
  out_.commit();
}

KldBase::KldBase(const std::filesystem::path& path) : file_(path) {
  const std::string where = path.string();
  const auto bytes = file_.bytes();
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    fail(
        "{}: not a subbit KL-divergence base file (no SBKLBASE header; write one with "
        "`subbit ppl REF --text FILE --save-logits {}`)",
        where, where);
  uint32_t version, top_k;
  uint64_t vocab, ctx, windows;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&top_k, bytes.data() + 12, 4);
  std::memcpy(&vocab, bytes.data() + 16, 8);
  std::memcpy(&ctx, bytes.data() + 24, 8);
  std::memcpy(&windows, bytes.data() + 32, 8);
  if (version != kVersion)
    fail("{}: base file version {} is not supported (only {})", where, version, kVersion);
  constexpr uint64_t kLimit = uint64_t(1) << 31;
  if (vocab < 1 || vocab >= kLimit) fail("{}: bad vocabulary size {} in the header", where, vocab);
  if (top_k < 1 || top_k > vocab)
    fail("{}: bad top_k {} in the header (vocabulary {})", where, top_k, vocab);
  if (ctx < 2 || ctx >= kLimit) fail("{}: bad ctx {} in the header", where, ctx);
  if (windows < 1 || windows >= kLimit)
    fail("{}: bad window count {} in the header", where, windows);
  vocab_ = int64_t(vocab);
  ctx_ = int64_t(ctx);
  windows_ = int64_t(windows);
  top_k_ = int64_t(top_k);
  // ctx, windows < 2^31 and top_k < 2^31 keep this product far below 2^64.
  const uint64_t expected = kHeaderBytes + uint64_t(windows_) * window_bytes(ctx_, top_k_);
  if (bytes.size() != expected)
    fail(
        "{}: {} bytes, but a header of {} windows of ctx {} with top_k {} needs {} (truncated or "
        "not written by this version?)",
        where, bytes.size(), windows_, ctx_, top_k_, expected);
  seen_.assign(vocab_, 0);
}

std::span<const int32_t> KldBase::window_tokens(int64_t window) const {
  const uint8_t* base =
      file_.bytes().data() + kHeaderBytes + size_t(window) * window_bytes(ctx_, top_k_);
  return {reinterpret_cast<const int32_t*>(base), size_t(ctx_)};
}

CompactLogProbs KldBase::position(int64_t window, int64_t p) {
  const uint8_t* record = file_.bytes().data() + kHeaderBytes +
                          size_t(window) * window_bytes(ctx_, top_k_) + 4 * size_t(ctx_) +
                          size_t(p) * record_bytes(top_k_);
  CompactLogProbs r;
  std::memcpy(&r.target_log_prob, record, 4);
  std::memcpy(&r.rest_log_mass, record + 4, 4);
  r.ids = {reinterpret_cast<const int32_t*>(record + 8), size_t(top_k_)};
  r.log_probs = {reinterpret_cast<const float*>(record + 8 + 4 * top_k_), size_t(top_k_)};

  const auto bad = [&](const std::string& problem) {
    fail("{}: window {} position {}: {}", file_.path().string(), window, p, problem);
  };
  const auto valid_log_prob = [](float v) { return std::isfinite(v) && v <= kLogProbSlack; };
  if (!valid_log_prob(r.target_log_prob))
    bad(fmt::format("bad target log-probability {}", r.target_log_prob));
  if (std::isnan(r.rest_log_mass) || r.rest_log_mass > kLogProbSlack ||
      r.rest_log_mass == std::numeric_limits<float>::infinity())
    bad(fmt::format("bad log of the remaining mass {}", r.rest_log_mass));
  double mass = std::exp(double(r.rest_log_mass));
  bool ok = true;
  std::string problem;
  for (int64_t j = 0; j < top_k_ && ok; ++j) {
    const int32_t id = r.ids[j];
    const float lp = r.log_probs[j];
    if (id < 0 || id >= vocab_)
      problem = fmt::format("token id {} outside the vocabulary of {}", id, vocab_);
    else if (seen_[id])
      problem = fmt::format("token id {} listed twice", id);
    else if (!valid_log_prob(lp))
      problem = fmt::format("bad log-probability {} for token {}", lp, id);
    else if (j > 0 && lp > r.log_probs[j - 1])
      problem = "log-probabilities not in non-increasing order";
    ok = problem.empty();
    if (ok) {
      seen_[id] = 1;
      mass += std::exp(double(lp));
    }
  }
  for (int64_t j = 0; j < top_k_; ++j)
    if (r.ids[j] >= 0 && r.ids[j] < vocab_) seen_[r.ids[j]] = 0;
  if (!ok) bad(problem);
  if (std::abs(mass - 1.0) > kMassSlack)
    bad(fmt::format("probabilities sum to {:.6f}, not 1", mass));
  return r;
}

KldResult evaluate_kl_divergence(const LlamaModel& model, const LlamaModel& reference,
                                 std::span<const int32_t> tokens, int64_t ctx, int64_t max_windows,
                                 const WindowProgress& progress) {
  const int64_t vocab = model.config().vocab_size;
  if (reference.config().vocab_size != vocab)
    fail("the reference's vocabulary ({}) differs from the model's ({})",
         reference.config().vocab_size, vocab);
  if (ctx > max_context(reference.config()))
    fail("--ctx {} exceeds the reference's maximum context of {}", ctx,
         max_context(reference.config()));
  WindowLogits reference_logits(reference, ctx);
  KldAccumulator acc;
  const PerplexityResult ppl = evaluate_perplexity(
      model, tokens, ctx, max_windows, progress,
      [&](int64_t, std::span<const int32_t> window, int64_t first, int64_t count,
          const float* logits) {
        const float* ref = reference_logits.logits(window, first, count);
        for (int64_t i = 0; i < count; ++i)
          acc.add(position_kld(ref + i * vocab, logits + i * vocab, vocab, window[first + i + 1]));
      });
  KldResult r = acc.finish();
  r.text_tokens = ppl.text_tokens;
  r.ctx = ppl.ctx;
  r.windows = ppl.windows;
  return r;
}

KldResult evaluate_kl_divergence(const LlamaModel& model, KldBase& base,
                                 std::span<const int32_t> tokens, int64_t max_windows,
                                 const WindowProgress& progress) {
  const int64_t vocab = model.config().vocab_size;
  const std::string where = base.path().string();
  if (base.vocab_size() != vocab)
    fail("{}: the base's vocabulary ({}) differs from the model's ({})", where, base.vocab_size(),
         vocab);
  const int64_t windows = max_windows > 0 ? std::min(max_windows, base.windows()) : base.windows();
  if (int64_t(tokens.size()) < windows * base.ctx())
    fail("{}: the base holds {} windows of {} tokens, but the text has only {} tokens", where,
         windows, base.ctx(), tokens.size());
  KldAccumulator acc;
  const PerplexityResult ppl =
      evaluate_perplexity(model, tokens, base.ctx(), windows, progress,
                          [&](int64_t w, std::span<const int32_t> window, int64_t first,
                              int64_t count, const float* logits) {
                            if (first == 0) {
                              const auto saved = base.window_tokens(w);
                              if (!std::equal(saved.begin(), saved.end(), window.begin()))
                                fail(
                                    "{}: window {} holds other tokens than the text (saved from "
                                    "another text or tokenizer?)",
                                    where, w);
                            }
                            for (int64_t i = 0; i < count; ++i)
                              acc.add(position_kld(base.position(w, first + i), logits + i * vocab,
                                                   vocab, window[first + i + 1]));
                          });
  KldResult r = acc.finish();
  r.text_tokens = ppl.text_tokens;
  r.ctx = ppl.ctx;
  r.windows = ppl.windows;
  r.top_k = base.top_k();
  return r;
}

}  // namespace subbit
