// subbit ppl MODEL --text FILE: perplexity with the golden-reference protocol, and optionally the
// KL-divergence from a reference model or a saved base (model/kl_divergence.h).
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/error.h"
#include "io/text_file.h"
#include "model/kl_divergence.h"
#include "model/loader.h"
#include "model/perplexity.h"

namespace subbit::cli {

namespace {

// Tokenized as transformers' tokenizer(text) does: the tokenizer's post-processor decides
// whether a BOS is added (none for the sb models, <s> for Llama-2-style tokenizers), which is
// how the golden references were computed.
std::vector<int32_t> tokenize(const ModelBundle& bundle, const std::string& text) {
  return bundle.tokenizer->encode(text, /*add_special_tokens=*/true);
}

void print_kld(const KldResult& r) {
  fmt::print("reference ppl = {:.4f} +/- {:.4f}; ppl ratio = {:.5f} (ln ratio {:.5f} +/- {:.5f})\n",
             r.reference_ppl, r.reference_ppl * r.reference_nll_stderr, r.ppl_ratio,
             std::log(r.ppl_ratio), r.ln_ppl_ratio_stderr);
  fmt::print(
      "KLD = {:.6f} +/- {:.6f}; median {:.6f}, p90 {:.6f}, p99 {:.6f}, p99.9 {:.6f}, max {:.6f}\n",
      r.kld_mean, r.kld_stderr, r.kld_median, r.kld_p90, r.kld_p99, r.kld_p999, r.kld_max);
  fmt::print("top-1 agreement = {:.3f}% +/- {:.3f}%\n", 100 * r.top1_agreement,
             100 * r.top1_stderr);
  if (r.top_k > 0)
    fmt::print(
        "base: top {} reference log-probs per token, {:.3f}% of the reference's mass outside "
        "them on average (KLD of the coarsened distributions, a lower bound)\n",
        r.top_k, 100 * r.reference_rest_mass);
}

}  // namespace

Action add_ppl_command(CLI::App& app) {
  struct Options {
    std::string model, text, reference, base, save_logits;
    int64_t ctx = 512;
    int64_t max_windows = 0;
    int64_t save_top_k = 64;
    int threads = 1;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("ppl", "perplexity of a text (non-overlapping windows)");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_option("--text", o->text, "UTF-8 text file")->required();
  CLI::Option* ctx =
      cmd->add_option("-c,--ctx", o->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "score at most K windows (0: all)");
  CLI::Option* reference = cmd->add_option(
      "--kl-divergence", o->reference,
      "KL-divergence from this reference model (directory or file), run beside MODEL window by "
      "window (exact)");
  CLI::Option* base = cmd->add_option(
      "--kl-divergence-base", o->base,
      "KL-divergence from reference log-probs saved by --save-logits (ctx from the file)");
  CLI::Option* save = cmd->add_option(
      "--save-logits", o->save_logits,
      "write this model's log-probs as a KL-divergence base (top-k per token + the rest's mass)");
  cmd->add_option("--save-top-k", o->save_top_k, "log-probs per token kept by --save-logits")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  reference->excludes(base);
  save->excludes(reference)->excludes(base);
  cmd->add_flag("--json", o->json, "print the result as JSON on the last stdout line");
  add_threads_option(*cmd, o->threads);

  return [o, ctx] {
    apply_threads(o->threads);
    const auto start = std::chrono::steady_clock::now();
    ModelBundle bundle = load_model(o->model);
    std::optional<KldBase> base;
    if (!o->base.empty()) {
      base.emplace(o->base);
      if (ctx->count() > 0 && o->ctx != base->ctx())
        fail("{}: the base was saved with --ctx {}, not {} (leave --ctx out to use the base's)",
             o->base, base->ctx(), o->ctx);
      o->ctx = base->ctx();
    }
    check_context(bundle, o->ctx, "--ctx");
    const std::string text = read_text_file(o->text);
    const std::vector<int32_t> tokens = tokenize(bundle, text);

    ProgressBar bar("ppl", 0, "tok");
    int64_t total_windows = 0;
    const auto progress = [&](int64_t done, int64_t total) {
      if (total_windows == 0) {
        total_windows = total;
        bar = ProgressBar("ppl", total, "tok");
      }
      bar.update(done, done * o->ctx);
    };

    std::optional<KldResult> kld;
    PerplexityResult r{};
    if (!o->reference.empty()) {
      ModelBundle ref = load_model(o->reference);
      check_context(ref, o->ctx, "--ctx");
      if (tokenize(ref, text) != tokens)
        fail(
            "{}: its tokenizer splits {} differently from {}'s; the KL-divergence needs the same "
            "tokens",
            o->reference, o->text, o->model);
      kld = evaluate_kl_divergence(*bundle.model, *ref.model, tokens, o->ctx, o->max_windows,
                                   progress);
    } else if (base) {
      kld = evaluate_kl_divergence(*bundle.model, *base, tokens, o->max_windows, progress);
    } else if (!o->save_logits.empty()) {
      const int64_t windows = count_windows(int64_t(tokens.size()), o->ctx, o->max_windows);
      KldBaseWriter writer(o->save_logits, bundle.model->config().vocab_size, o->ctx, windows,
                           o->save_top_k);
      r = evaluate_perplexity(
          *bundle.model, tokens, o->ctx, o->max_windows, progress,
          [&](int64_t w, std::span<const int32_t> window, int64_t first, int64_t count,
              const float* logits) { writer.add_chunk(w, window, first, count, logits); });
      writer.commit();
    } else {
      r = evaluate_perplexity(*bundle.model, tokens, o->ctx, o->max_windows, progress);
    }
    if (kld)
      r = {kld->ppl,         kld->nll_mean, kld->nll_stderr, kld->scored_tokens,
           kld->text_tokens, kld->ctx,      kld->windows};
    bar.finish();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(
        "ppl = {:.4f} +/- {:.4f} over {} scored tokens ({} windows of {}; text {} tokens; {:.1f} "
        "s)\n",
        r.ppl, r.ppl * r.nll_stderr, r.scored_tokens, r.windows, r.ctx, r.text_tokens, seconds);
    if (kld) print_kld(*kld);
    if (!o->save_logits.empty())
      fmt::print("wrote {} (top {} log-probs per token)\n", o->save_logits,
                 std::min(o->save_top_k, bundle.model->config().vocab_size));
    if (o->json) {
      nlohmann::json j = {{"model", o->model},
                          {"text", o->text},
                          {"ppl", r.ppl},
                          {"nll_mean", r.nll_mean},
                          {"nll_stderr", r.nll_stderr},
                          {"scored_tokens", r.scored_tokens},
                          {"text_tokens", r.text_tokens},
                          {"ctx", r.ctx},
                          {"windows", r.windows},
                          {"threads", o->threads},
                          {"seconds", seconds}};
      if (kld) {
        const KldResult& k = *kld;
        j["reference"] = o->reference.empty() ? o->base : o->reference;
        j["reference_top_k"] = k.top_k;  // 0: exact, from a reference model
        j["reference_ppl"] = k.reference_ppl;
        j["reference_nll_mean"] = k.reference_nll_mean;
        j["reference_nll_stderr"] = k.reference_nll_stderr;
        j["ppl_ratio"] = k.ppl_ratio;
        j["ln_ppl_ratio_stderr"] = k.ln_ppl_ratio_stderr;
        j["kld_mean"] = k.kld_mean;
        j["kld_stderr"] = k.kld_stderr;
        j["kld_median"] = k.kld_median;
        j["kld_p90"] = k.kld_p90;
        j["kld_p99"] = k.kld_p99;
        j["kld_p999"] = k.kld_p999;
        j["kld_max"] = k.kld_max;
        j["top1_agreement"] = k.top1_agreement;
        j["top1_agreement_stderr"] = k.top1_stderr;
        j["reference_rest_mass"] = k.reference_rest_mass;
      }
      if (!o->save_logits.empty()) j["saved_logits"] = o->save_logits;
      fmt::print("{}\n", j.dump());
    }
    return 0;
  };
}

}  // namespace subbit::cli
