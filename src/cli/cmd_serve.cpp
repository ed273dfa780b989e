// subbit serve MODEL: an OpenAI-compatible HTTP server (docs/serving.md). Binds to loopback
// unless told otherwise; SIGINT/SIGTERM end the requests in flight and stop it cleanly.
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <ctime>
#include <thread>

#include "cli/commands.h"
#include "common/error.h"
#include "model/chat_prompt.h"
#include "model/loader.h"
#include "server/engine.h"
#include "server/http_server.h"

namespace subbit::cli {

Action add_serve_command(CLI::App& app) {
  struct Options {
    std::string model, host = "127.0.0.1", api_key;
    int port = 8080;
    int parallel = 1;
    int64_t ctx = 0;
    size_t queue = 16;
    int threads = 1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("serve", "serve the model over an OpenAI-compatible HTTP API");
  cmd->add_option("model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--host", o->host, "address to listen on (loopback by default)")
      ->capture_default_str();
  cmd->add_option("--port", o->port, "port to listen on; 0 picks a free one")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--parallel", o->parallel,
                  "requests generated at once (slots, one KV cache each)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option(
         "--ctx", o->ctx,
         "tokens per slot, prompt + completion (default: the model's maximum, at most 4096)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--queue", o->queue, "requests waiting for a slot before new ones get 503")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{4096}));
  cmd->add_option("--api-key", o->api_key,
                  "require 'Authorization: Bearer KEY' on every endpoint but /health");
  add_threads_option(*cmd, o->threads);

  return [o] {
    // Signals go to one waiting thread, not to whichever thread they happen to interrupt; every
    // thread started from here on inherits the mask.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    ::signal(SIGPIPE, SIG_IGN);  // a client that hangs up mid-stream is an error return, not death

    apply_threads(o->threads);
    ModelBundle bundle = load_model(o->model);
    const LlamaConfig& config = bundle.model->config();
    const int64_t ctx = conversation_context(bundle, o->ctx);
    const chat::ChatFormat chat_format = chat_format_for(bundle);

    server::Engine engine(*bundle.model, *bundle.tokenizer, o->parallel, ctx, o->queue);
    server::ModelInterface model{bundle.tokenizer.get(), &chat_format,
                                 /*add_special_tokens_to_completions=*/true,
                                 end_of_turn_tokens(bundle), config.vocab_size};
    server::ServerOptions options;
    options.host = o->host;
    options.port = o->port;
    options.api_key = o->api_key;
    options.model_name = std::filesystem::path(o->model).filename().string();
    if (options.model_name.empty())
      options.model_name = std::filesystem::path(o->model).parent_path().filename().string();
    // Every slot and queued request may hold a connection (streams do), plus room for /health,
    // quick refusals and keep-alive connections.
    options.http_threads = o->parallel + int(o->queue) + 8;
    server::HttpServer http(engine, model, options);
    const int port = http.bind();

    std::atomic<bool> stopped{false};
    std::thread signal_waiter([&] {
      const timespec poll{0, 200'000'000};
      while (!stopped) {
        const int signal = sigtimedwait(&stop_signals, nullptr, &poll);
        if (signal == SIGINT || signal == SIGTERM) {
          fmt::print(stderr, "\n{}: stopping\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
          engine.stop();  // ends waiting requests first, so their handlers can answer
          http.stop();
          return;
        }
      }
    });
    fmt::print(stderr,
               "serving {} on http://{}:{} ({} slot{} of {} tokens, queue {}, {} threads{})\n",
               options.model_name, o->host, port, o->parallel, o->parallel == 1 ? "" : "s", ctx,
               o->queue, o->threads, o->api_key.empty() ? "" : ", API key required");
    std::fflush(stderr);
    http.serve();
    stopped = true;
    signal_waiter.join();
    engine.stop();
    fmt::print(stderr, "stopped\n");
    return 0;
  };
}

}  // namespace subbit::cli
