// subbit ppl MODEL --text FILE: perplexity with the golden-reference protocol.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>

#include "cli/commands.h"
#include "cli/progress.h"
#include "io/text_file.h"
#include "model/loader.h"
#include "model/perplexity.h"

namespace subbit::cli {

Action add_ppl_command(CLI::App& app) {
  struct Options {
    std::string model, text;
    int64_t ctx = 512;
    int64_t max_windows = 0;
    int threads = 1;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("ppl", "perplexity of a text (non-overlapping windows)");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_option("--text", o->text, "UTF-8 text file")->required();
  cmd->add_option("-c,--ctx", o->ctx, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "score at most K windows (0: all)");
  cmd->add_flag("--json", o->json, "print the result as JSON on the last stdout line");
  add_threads_option(*cmd, o->threads);

  return [o] {
    apply_threads(o->threads);
    const auto start = std::chrono::steady_clock::now();
    ModelBundle bundle = load_model(o->model);
    const std::string text = read_text_file(o->text);
    // Tokenized as transformers' tokenizer(text) does: the tokenizer's post-processor decides
    // whether a BOS is added (none for the sb models, <s> for Llama-2-style tokenizers), which is
    // how the golden references were computed.
    const std::vector<int32_t> tokens = bundle.tokenizer->encode(text, /*add_special_tokens=*/true);
    ProgressBar bar("ppl", 0, "tok");
    int64_t total_windows = 0;
    PerplexityResult r = evaluate_perplexity(
        *bundle.model, tokens, o->ctx, o->max_windows, [&](int64_t done, int64_t total) {
          if (total_windows == 0) {
            total_windows = total;
            bar = ProgressBar("ppl", total, "tok");
          }
          bar.update(done, done * o->ctx);
        });
    bar.finish();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("ppl = {:.4f} +/- {:.4f} over {} scored tokens ({} windows of {}; text {} tokens; {:.1f} s)\n",
               r.ppl, r.ppl * r.nll_stderr, r.scored_tokens, r.windows, r.ctx, r.text_tokens, seconds);
    if (o->json) {
      nlohmann::json j = {{"model", o->model},           {"text", o->text},
                          {"ppl", r.ppl},                {"nll_mean", r.nll_mean},
                          {"nll_stderr", r.nll_stderr},  {"scored_tokens", r.scored_tokens},
                          {"text_tokens", r.text_tokens}, {"ctx", r.ctx},
                          {"windows", r.windows},        {"threads", o->threads},
                          {"seconds", seconds}};
      fmt::print("{}\n", j.dump());
    }
    return 0;
  };
}

}  // namespace subbit::cli
