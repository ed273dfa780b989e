#pragma once
// Each subcommand registers its options on the app and returns the action to run when chosen.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace subbit {
struct ModelBundle;
}

namespace subbit::cli {

using Action = std::function<int()>;

Action add_ppl_command(CLI::App& app);
Action add_run_command(CLI::App& app);
Action add_info_command(CLI::App& app);
Action add_bench_command(CLI::App& app);
Action add_export_command(CLI::App& app);
Action add_random_model_command(CLI::App& app);
Action add_serve_command(CLI::App& app);

// Shared option: worker threads (default: all cores).
void add_threads_option(CLI::App& command, int& threads);
void apply_threads(int threads);

// Refuses a context beyond the model's max_position_embeddings, naming the model, the option
// and the config field.
void check_context(const ModelBundle& bundle, int64_t ctx, const char* option);

// The context (KV cache) of a conversation (`run --chat`, `serve`): --ctx when given (checked),
// otherwise the model's limit capped at 4096 as llama.cpp does, so that a model trained for 128k
// positions does not reserve gigabytes of keys and values per slot.
int64_t conversation_context(const ModelBundle& bundle, int64_t requested_ctx);

}  // namespace subbit::cli
