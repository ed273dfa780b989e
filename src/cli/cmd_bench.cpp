// subbit bench MODEL: prompt processing (ppN) and generation (tgN) speed, llama-bench style.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <random>
#include <set>

#include "cli/commands.h"
#include "common/error.h"
#include "model/loader.h"
#include "ops/parallel.h"

namespace subbit::cli {

namespace {

struct Stats {
  double mean, sd;
};

Stats mean_sd(const std::vector<double>& v) {
  double mean = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  return {mean, v.size() > 1 ? std::sqrt(var / double(v.size() - 1)) : 0.0};
}

// Tokens per second of one run: a batched prompt of n tokens, or n single-token steps.
double run_once(const LlamaModel& model, const std::vector<int32_t>& tokens, bool batched) {
  const LlamaConfig& c = model.config();
  RunState state(c, int64_t(tokens.size()));
  std::vector<float> logits(c.vocab_size);
  const auto start = std::chrono::steady_clock::now();
  if (batched) {
    model.forward(tokens, 0, state, logits.data(), false);
  } else {
    for (size_t i = 0; i < tokens.size(); ++i)
      model.forward(std::span<const int32_t>(&tokens[i], 1), int64_t(i), state, logits.data(),
                    false);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return double(tokens.size()) / seconds;
}

}  // namespace

Action add_bench_command(CLI::App& app) {
  struct Options {
    std::string model;
    int64_t prompt = 512, generate = 128;
    int repetitions = 5;
    std::vector<int> threads;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("bench", "prompt-processing and generation speed");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_option("-p,--n-prompt", o->prompt, "prompt tokens (pp test; 0 skips)")
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", o->generate, "generated tokens (tg test; 0 skips)")
      ->capture_default_str();
  cmd->add_option("-r,--repetitions", o->repetitions, "runs per test")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("-t,--threads", o->threads, "thread counts to test, e.g. -t 1,2")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));

  return [o] {
    ModelBundle bundle = load_model(o->model);
    const LlamaModel& model = *bundle.model;
    const LlamaConfig& c = model.config();
    check_context(bundle, o->prompt, "-p");
    check_context(bundle, o->generate, "-n");
    if (o->threads.empty()) o->threads = {num_threads()};

    int64_t params = 0, bytes = 0;
    std::set<std::string> types;
    for (const StoredTensor& t : bundle.inventory) {
      params += t.params;
      bytes += t.bytes;
      if (t.kind == "attention" || t.kind == "mlp") types.insert(t.type);
    }
    const std::string name =
        fmt::format("{} {}", bundle.path.filename().string(), fmt::join(types, "+"));
    std::mt19937 rng(42);
    auto random_tokens = [&](int64_t n) {
      std::vector<int32_t> t(n);
      for (auto& id : t) id = int32_t(rng() % uint32_t(c.vocab_size));
      return t;
    };

    // Each test allocates a cache for its own length (f32 keys and values).
    fmt::print("kv cache: {:.2f} MiB for pp{}, {:.2f} MiB for tg{}\n",
               RunState::bytes_for(c, o->prompt) / (1024.0 * 1024.0), o->prompt,
               RunState::bytes_for(c, o->generate) / (1024.0 * 1024.0), o->generate);
    fmt::print("| {:<28} | {:>10} | {:>9} | {:>7} | {:>7} | {:>16} |\n", "model", "size", "params",
               "threads", "test", "t/s");
    fmt::print("| {:-<28} | {:->10} | {:->9} | {:->7} | {:->7} | {:->16} |\n", "", "", "", "", "",
               "");
    for (int threads : o->threads) {
      set_num_threads(threads);
      for (const auto& [length, batched] :
           {std::pair{o->prompt, true}, std::pair{o->generate, false}}) {
        if (length <= 0) continue;
        const std::vector<int32_t> tokens = random_tokens(length);
        run_once(model, tokens, batched);  // warm-up: page in weights, settle clocks
        std::vector<double> rates;
        for (int r = 0; r < o->repetitions; ++r) rates.push_back(run_once(model, tokens, batched));
        const Stats s = mean_sd(rates);
        fmt::print("| {:<28} | {:>6.2f} MiB | {:>7.2f} M | {:>7} | {:>7} | {:>16} |\n", name,
                   bytes / (1024.0 * 1024.0), params / 1e6, threads,
                   fmt::format("{}{}", batched ? "pp" : "tg", length),
                   fmt::format("{:.2f} ± {:.2f}", s.mean, s.sd));
        std::fflush(stdout);
      }
    }
    return 0;
  };
}

}  // namespace subbit::cli
