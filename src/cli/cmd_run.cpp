// subbit run MODEL -p PROMPT: streaming generation. stdout carries only the prompt and the
// generated text so it can be piped; statistics go to stderr.
#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "common/error.h"
#include "model/generate.h"
#include "model/loader.h"

namespace subbit::cli {

namespace {

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence, so a
// character split across tokens is printed whole.
size_t complete_utf8_prefix(const std::string& s) {
  size_t lead = s.size();
  int continuation_bytes = 0;
  while (lead > 0 && continuation_bytes < 4 && (static_cast<unsigned char>(s[lead - 1]) & 0xC0) == 0x80) {
    --lead;
    ++continuation_bytes;
  }
  if (lead == 0) return s.size();
  const unsigned char c = s[lead - 1];
  const int sequence_length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  return continuation_bytes + 1 >= sequence_length ? s.size() : lead - 1;
}

}  // namespace

Action add_run_command(CLI::App& app) {
  struct Options {
    std::string model, prompt;
    int64_t n = 128;
    int64_t ctx = 0;
    float temperature = 0.0f;
    float top_p = 0.95f;
    uint64_t seed = 0;
    int threads = 1;
    bool ignore_eos = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "generate text from a prompt (streams to stdout)");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_option("-p,--prompt", o->prompt, "prompt text")->required();
  cmd->add_option("-n,--n-predict", o->n, "tokens to generate")->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  cmd->add_option("-c,--ctx", o->ctx,
                  "context (KV cache) size; prompt + -n must fit (default: prompt + -n)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--temp", o->temperature, "temperature; 0 is greedy")->capture_default_str()
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass")->capture_default_str()
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", o->seed, "random seed for sampling")->capture_default_str();
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating after end-of-sequence");
  add_threads_option(*cmd, o->threads);

  return [o] {
    apply_threads(o->threads);
    ModelBundle bundle = load_model(o->model);
    const Tokenizer& tok = *bundle.tokenizer;
    const std::vector<int32_t> prompt = tok.encode(o->prompt, /*add_special_tokens=*/true);
    const int64_t needed = int64_t(prompt.size()) + o->n;
    if (o->ctx > 0) {
      check_context(bundle, o->ctx, "--ctx");
      if (needed > o->ctx)
        fail("{}: the prompt ({} tokens) + -n {} exceed --ctx {}", o->model, prompt.size(), o->n, o->ctx);
    } else {
      check_context(bundle, needed, "prompt + -n");
    }
    fmt::print("{}", o->prompt);
    std::fflush(stdout);

    // Decode prompt+generated each step and print what is new: correct for tokens that merge
    // across boundaries (byte fallback, partial UTF-8, SentencePiece spaces).
    std::vector<int32_t> all = prompt;
    const size_t prompt_text_size = tok.decode(prompt).size();
    size_t printed = prompt_text_size;
    const auto stop = o->ignore_eos ? std::nullopt : bundle.model->config().eos_token_id;
    GenerationStats stats;
    generate(*bundle.model, prompt, o->n, {o->temperature, o->top_p, o->seed}, stop,
             [&](int32_t id) {
               if (stop && id == *stop) return;
               all.push_back(id);
               const std::string text = tok.decode(all);
               const size_t ready = complete_utf8_prefix(text);
               if (ready > printed) {
                 fmt::print("{}", text.substr(printed, ready - printed));
                 std::fflush(stdout);
                 printed = ready;
               }
             },
             &stats);
    fmt::print("\n");
    std::fflush(stdout);  // the text's last line before the statistics when both go to one pipe
    fmt::print(stderr, "prompt: {} tokens, {:.1f} t/s | generated: {} tokens, {:.1f} t/s\n",
               stats.prompt_tokens, stats.prompt_tokens / std::max(stats.prompt_seconds, 1e-9),
               stats.generated_tokens,
               stats.generated_tokens / std::max(stats.generation_seconds, 1e-9));
    return 0;
  };
}

}  // namespace subbit::cli
