// subbit run MODEL -p PROMPT: streaming generation. stdout carries only the prompt and the
// generated text so it can be piped; statistics go to stderr.
// subbit run MODEL --chat: an interactive conversation through the model's chat template and
// the server's engine (the same path as `subbit serve`'s /v1/chat/completions).
#include <fmt/format.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"
#include "io/text_file.h"
#include "model/chat_prompt.h"
#include "model/generate.h"
#include "model/loader.h"
#include "server/engine.h"

namespace subbit::cli {

namespace {

// Reads user turns from stdin until an empty line or end of input; streams each answer to
// stdout. The prompt marker and notes go to stderr so stdout holds only the answers.
int chat(const ModelBundle& bundle, const std::string& system, int64_t context, int64_t max_tokens,
         SamplingParams sampling) {
  const chat::ChatFormat format = chat_format_for(bundle);
  server::Engine engine(*bundle.model, *bundle.tokenizer, /*slots=*/1, context, /*max_queue=*/0);
  jinja::Json messages = jinja::Json::array();
  if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
  fmt::print(stderr, "chat with {} ({}); an empty line or end of input ends it\n",
             bundle.path.string(),
             format.has_template() ? "its chat template"
                                   : "no chat template: plain User:/Assistant: turns");
  std::string line;
  while (true) {
    fmt::print(stderr, "> ");
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    messages.push_back({{"role", "user"}, {"content", line}});
    server::CompletionRequest request;
    request.prompt = bundle.tokenizer->encode(format.apply(messages, true), !format.has_template());
    if (int64_t(request.prompt.size()) >= context)
      fail("the conversation ({} tokens) no longer fits the model's context of {}",
           request.prompt.size(), context);
    request.max_tokens = max_tokens;
    request.sampling = sampling;
    request.stop_strings = format.stop_strings();
    request.stop_tokens = end_of_turn_tokens(bundle);
    auto job = engine.submit(std::move(request));
    std::string answer;
    while (true) {
      const server::Job::Update u = job->wait(std::chrono::milliseconds(100));
      fmt::print("{}", u.text);
      std::fflush(stdout);
      answer += u.text;
      if (u.finish == server::FinishReason::Failed) fail("generation failed: {}", u.error);
      if (u.finish != server::FinishReason::None) break;
    }
    fmt::print("\n");
    std::fflush(stdout);
    messages.push_back({{"role", "assistant"}, {"content", answer}});
  }
  return 0;
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
    bool chat = false;
    std::string system;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "generate text from a prompt (streams to stdout)");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_option("-p,--prompt", o->prompt, "prompt text (required unless --chat)");
  cmd->add_flag("--chat", o->chat,
                "interactive conversation through the model's chat template "
                "(user turns from stdin, one per line; -n limits each answer)");
  cmd->add_option("--system", o->system, "system message for --chat");
  cmd->add_option("-n,--n-predict", o->n, "tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  cmd->add_option("-c,--ctx", o->ctx,
                  "context (KV cache) size; prompt + -n must fit (default: prompt + -n)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--temp", o->temperature, "temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", o->seed, "random seed for sampling")->capture_default_str();
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating after end-of-sequence");
  add_threads_option(*cmd, o->threads);

  return [o] {
    if (!o->chat && o->prompt.empty())
      fail("-p/--prompt is required (or --chat for a conversation)");
    apply_threads(o->threads);
    ModelBundle bundle = load_model(o->model);
    if (o->chat)
      return chat(bundle, o->system, conversation_context(bundle, o->ctx),
                  std::max<int64_t>(o->n, 1), {o->temperature, o->top_p, o->seed});
    const Tokenizer& tok = *bundle.tokenizer;
    const std::vector<int32_t> prompt = tok.encode(o->prompt, /*add_special_tokens=*/true);
    const int64_t needed = int64_t(prompt.size()) + o->n;
    if (o->ctx > 0) {
      check_context(bundle, o->ctx, "--ctx");
      if (needed > o->ctx)
        fail("{}: the prompt ({} tokens) + -n {} exceed --ctx {}", o->model, prompt.size(), o->n,
             o->ctx);
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
    generate(
        *bundle.model, prompt, o->n, {o->temperature, o->top_p, o->seed}, stop,
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
