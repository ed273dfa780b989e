#pragma once
// Each subcommand registers its options on the app and returns the action to run when chosen.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace subbit::cli {

using Action = std::function<int()>;

Action add_ppl_command(CLI::App& app);
Action add_run_command(CLI::App& app);
Action add_info_command(CLI::App& app);
Action add_bench_command(CLI::App& app);
Action add_export_command(CLI::App& app);
Action add_serve_command(CLI::App& app);

// Shared option: worker threads (default: all cores).
void add_threads_option(CLI::App& command, int& threads);
void apply_threads(int threads);

}  // namespace subbit::cli
