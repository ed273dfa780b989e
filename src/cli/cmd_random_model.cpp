// subbit random-model NAME -o DIR: a random-weight Hugging Face checkpoint with a named model's
// exact config, for measuring time and memory at real sizes (model/random_checkpoint.h).
#include <fmt/format.h>

#include <fstream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/error.h"
#include "model/random_checkpoint.h"

namespace subbit::cli {

Action add_random_model_command(CLI::App& app) {
  struct Options {
    std::string name, config, output, tokenizer;
    RandomCheckpointOptions random;
    int threads = 1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "random-model",
      "write a random-weight Hugging Face checkpoint with a named model's exact config");
  cmd->footer(fmt::format(
      "Models: {}.\n"
      "Weights are i.i.d. Gaussian (bf16), norms 1. Such matrices have flat singular-value "
      "spectra,\n"
      "the worst case for truncated SVD (LittleBit's Dual-SVID): use these checkpoints to measure\n"
      "time and memory, not accuracy.",
      fmt::join(random_checkpoint_preset_names(), ", ")));
  auto* name = cmd->add_option("name", o->name, "model name, e.g. llama-3.2-1b");
  auto* config =
      cmd->add_option("--config", o->config, "use this config.json instead of a named model");
  name->excludes(config);
  cmd->add_option("-o,--output", o->output, "output directory")->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "folder with tokenizer.json (and tokenizer_config.json) to copy, e.g. "
                  "../shared/models/smollm2-tokenizer; the model's vocab may be larger")
      ->required();
  cmd->add_option("--std", o->random.std, "standard deviation of the weights")
      ->capture_default_str();
  cmd->add_option("--seed", o->random.seed, "random seed")->capture_default_str();
  add_threads_option(*cmd, o->threads);

  return [o] {
    apply_threads(o->threads);
    nlohmann::json config;
    if (!o->config.empty()) {
      std::ifstream in(o->config);
      if (!in) fail("{}: cannot open", o->config);
      config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (config.is_discarded()) fail("{}: invalid JSON", o->config);
    } else if (!o->name.empty()) {
      config = random_checkpoint_preset(o->name);
    } else {
      fail("give a model name ({}) or --config FILE",
           fmt::join(random_checkpoint_preset_names(), ", "));
    }
    o->random.tokenizer_dir = o->tokenizer;
    ProgressBar bar("random-model", 0, "B");
    int64_t total_bytes = 0;
    write_random_checkpoint(o->output, config, o->random, [&](int64_t done, int64_t total) {
      if (total_bytes == 0) {
        total_bytes = total;
        bar = ProgressBar("random-model", total, "B");
      }
      bar.update(done, done);
    });
    bar.finish();
    fmt::print("wrote {} ({:.2f} GiB of bf16 weights)\n", o->output,
               total_bytes / (1024.0 * 1024.0 * 1024.0));
    return 0;
  };
}

}  // namespace subbit::cli
