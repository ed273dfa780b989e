// subbit: compress LLMs below one bit per weight and run them.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "cli/commands.h"
#include "cli/process_environment.h"
#include "common/error.h"
#include "model/loader.h"
#include "ops/parallel.h"

namespace subbit::cli {

void add_threads_option(CLI::App& command, int& threads) {
  threads = int(std::max(1u, std::thread::hardware_concurrency()));
  command.add_option("-t,--threads", threads, "worker threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
}

void apply_threads(int threads) { set_num_threads(threads); }

void check_context(const ModelBundle& bundle, int64_t ctx, const char* option) {
  const LlamaConfig& c = bundle.model->config();
  if (ctx > c.max_position_embeddings)
    fail(
        "{}: {} {} exceeds the model's maximum context (max_position_embeddings = {} in its "
        "config)",
        bundle.path.string(), option, ctx, c.max_position_embeddings);
  if (ctx > max_context(c))
    fail(
        "{}: {} {} exceeds the sliding window ({} in its config); sliding-window attention is not "
        "implemented",
        bundle.path.string(), option, ctx, max_context(c));
}

int64_t conversation_context(const ModelBundle& bundle, int64_t requested_ctx) {
  if (requested_ctx > 0) {
    check_context(bundle, requested_ctx, "--ctx");
    return requested_ctx;
  }
  return std::min<int64_t>(max_context(bundle.model->config()), 4096);
}

}  // namespace subbit::cli

namespace {

// `subbit compress` lives in a separate program (it links libtorch; the runtime does not).
[[noreturn]] void exec_compressor(int argc, char** argv) {
  const auto self = std::filesystem::read_symlink("/proc/self/exe");
  const auto compressor = self.parent_path() / "subbit-compress";
  std::vector<char*> args;
  std::string program = compressor.string();
  args.push_back(program.data());
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  ::execv(program.c_str(), args.data());
  fmt::print(stderr, "error: cannot run {}: {} (was subbit built with SUBBIT_WITH_TORCH=ON?)\n",
             program, std::strerror(errno));
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  // The compressor sets its own policy, so it is started before this one's is.
  if (argc > 1 && std::strcmp(argv[1], "compress") == 0) exec_compressor(argc, argv);
  subbit::cli::set_process_environment(argv, subbit::cli::OmpWait::kShortSpin);

  CLI::App app{"subbit: compress LLMs below one bit per weight and run them"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "subbit 0.1.0");
  app.footer("  compress                    compress a model (see `subbit compress --help`)");
  std::map<const CLI::App*, subbit::cli::Action> actions;
  for (auto add :
       {subbit::cli::add_ppl_command, subbit::cli::add_run_command, subbit::cli::add_info_command,
        subbit::cli::add_bench_command, subbit::cli::add_export_command,
        subbit::cli::add_random_model_command, subbit::cli::add_serve_command}) {
    auto action = add(app);
    actions[app.get_subcommands({}).back()] = action;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const auto& [command, action] : actions)
      if (command->parsed()) return action();
  } catch (const subbit::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 1;
}
