// subbit-compress (run as `subbit compress`): compress a Hugging Face model into a subbit file.
// A separate program because it links libtorch, which the inference runtime must not.
#include <fmt/format.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <map>
#include <thread>

#include "cli/process_environment.h"
#include "cli/progress.h"
#include "common/error.h"
#include "compress/data_parallel.h"
#include "compress/pipeline.h"
#include "formats/format_table.h"
#include "ops/parallel.h"

int main(int argc, char** argv) {
  using namespace subbit;
  cli::set_process_environment(argv, cli::OmpWait::kPassive);
  compress::CompressOptions o;
  std::string model, out, device = "cpu", checkpoint;
  std::vector<std::string> train_texts, sensitivity_texts;
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  bool no_checkpoint = false, freeze_norms = false;

  CLI::App app{"subbit compress: compress a Hugging Face Llama model into one subbit file"};
  app.name("subbit compress");
  app.add_option("model", model, "Hugging Face model directory")->required();
  app.add_option("-o,--output", out, "output model file (.gguf)")->required();
  app.add_option("--method", o.method, compress::compress_method_names(" | "))
      ->capture_default_str();
  std::vector<std::string_view> sized_by_bpw;
  for (const compress::CompressMethodRow& row : compress::compress_methods())
    if (row.targets_bpw) sized_by_bpw.push_back(row.name);
  app.add_option(
         "--bpw", o.bpw,
         fmt::format("{}: target bits per weight of linear layers", fmt::join(sized_by_bpw, ", ")))
      ->capture_default_str();
  // Every method declares its own options (with their defaults) in a group of its own.
  std::map<std::string_view, std::shared_ptr<compress::CompressMethod>> methods;
  for (const compress::CompressMethodRow& row : compress::compress_methods()) {
    methods[row.name] = row.make();
    methods[row.name]->add_options(
        *app.add_option_group(std::string(row.name), std::string(row.summary)));
  }
  app.add_option("--budget", o.budget,
                 "linear: --bpw is the linear layers' target | whole: every stored bit over every "
                 "parameter")
      ->capture_default_str();
  app.add_option(
      "--embed-type", o.embed_type,
      "embedding: dense (as stored) | METHOD[:N], e.g. rtn:4, littlebit:0.55 (default: dense; "
      "with --budget whole, --method)");
  app.add_option(
      "--head-type", o.head_type,
      "LM head: the same types (default: a tied head is stored once with the embedding)");
  app.add_option("--allocate", o.allocate,
                 "uniform: one target for every linear layer | sensitivity: targets by measured KL "
                 "at the same bits (with --budget whole, for the embedding/head it sizes too)")
      ->capture_default_str();
  app.add_option("--sensitivity-text", sensitivity_texts,
                 "text for --allocate sensitivity and token frequencies (default: --train-text)");
  app.add_option("--sensitivity-tokens", o.sensitivity_tokens, "tokens for --allocate sensitivity")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--frequency-tokens", o.frequency_tokens,
                 "tokens of --sensitivity-text (or --train-text) counted for an embedding/head "
                 "with widths by token frequency (e.g. rtn:2.5)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  auto* texts = app.add_option("--train-text", train_texts,
                               "training text files (.txt or .xz); never wiki.test.raw");
  app.add_option("--train-tokens", o.qat.train_tokens, "tokens to train on (0: post-training only)")
      ->capture_default_str()
      ->needs(texts);
  app.add_option("--lr", o.qat.lr, "peak learning rate (AdamW, warm-up + cosine)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seq", o.qat.seq, "training sequence length")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--batch", o.qat.batch, "sequences per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--hidden-weight", o.qat.hidden_weight, "weight of the hidden-state MSE term")
      ->capture_default_str();
  app.add_option("--seed", o.qat.seed, "data-order seed")->capture_default_str();
  app.add_flag("--freeze-norms", freeze_norms,
               "QAT: keep the RMSNorm weights as stored (default: they train)");
  app.add_flag(
      "--blockwise", o.qat.blockwise,
      "QAT block by block: each block learns the teacher's block output from its input (MSE); with "
      "several ranks, blocks are spread over them (docs/distributed.md)");
  app.add_option("--checkpoint", checkpoint,
                 "checkpoint (default: OUTPUT.ckpt): QAT's file, or post-training's folder of "
                 "finished blocks");
  app.add_option("--checkpoint-every", o.qat.checkpoint_every, "steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_flag("--no-checkpoint", no_checkpoint, "do not write checkpoints");
  app.add_option("--device", device, "cpu | cuda")->capture_default_str();
  app.add_option("-t,--threads", threads, "CPU threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  // Data-parallel QAT (docs/distributed.md); unset values come from torchrun's variables.
  int world_size = 0, rank = -1, master_port = 0, dist_timeout = 1800;
  std::string master_addr;
  auto* dist = app.add_option_group("distributed",
                                    "data-parallel QAT over several processes (Gloo over TCP)");
  dist->add_option("--world-size", world_size, "number of ranks (default: $WORLD_SIZE, else 1)");
  dist->add_option("--rank", rank,
                   "this process's rank, 0 writes the output (default: $RANK, else 0)");
  dist->add_option("--master-addr", master_addr,
                   "rank 0's host (default: $MASTER_ADDR, else 127.0.0.1)");
  dist->add_option("--master-port", master_port,
                   "rank 0's rendezvous port (default: $MASTER_PORT, else 29500)");
  dist->add_option("--dist-timeout", dist_timeout,
                   "seconds a rank waits for the others before failing")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  CLI11_PARSE(app, argc, argv);

  try {
    const std::shared_ptr<compress::CompressMethod>& method =
        methods.at(compress::find_compress_method(o.method).name);
    o.qat.train_norms = !freeze_norms;
    if (device == "cuda") {
      if (!torch::cuda::is_available())
        fail("--device cuda: this libtorch has no usable CUDA device");
      o.qat.device = torch::Device(torch::kCUDA);
    } else if (device != "cpu") {
      fail("--device must be cpu or cuda, got \"{}\"", device);
    }
    for (const auto& t : train_texts) o.train_texts.emplace_back(t);
    for (const auto& t : sensitivity_texts) o.sensitivity_texts.emplace_back(t);
    if (o.qat.train_tokens > 0 && !no_checkpoint && !o.qat.blockwise)
      o.qat.checkpoint = checkpoint.empty() ? out + ".ckpt" : checkpoint;
    if (o.qat.train_tokens == 0 && !no_checkpoint)
      o.block_checkpoint = checkpoint.empty() ? out + ".ckpt" : checkpoint;
    set_num_threads(threads);
    torch::set_num_threads(threads);
    const compress::DataParallelOptions ranks = compress::resolve_data_parallel(
        world_size, rank, master_addr, master_port, std::chrono::seconds(dist_timeout));
    if (ranks.world_size > 1 && o.qat.train_tokens == 0)
      fail("--world-size {}: only QAT runs on several ranks (give --train-tokens)",
           ranks.world_size);
    if (ranks.world_size > 1) o.qat.data_parallel = std::make_shared<compress::DataParallel>(ranks);
    const bool root = ranks.rank == 0;

    ProgressBar bar("qat", 1, "tok");
    compress::CompressCallbacks callbacks;
    // The other ranks do what rank 0 does and stay quiet.
    if (root) callbacks.log = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
    // One line per block, also when stderr is a log file: a block of a 7B model takes minutes.
    std::chrono::steady_clock::time_point blocks_start;
    callbacks.block_progress = [&](const compress::BlockProgress& p) {
      if (!root) return;
      if (p.done == 0) {
        blocks_start = std::chrono::steady_clock::now();
        return;
      }
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - blocks_start).count();
      fmt::print(stderr, "{} block {}/{} | elapsed {} | ETA {}\n", p.what, p.done, p.total,
                 format_duration(elapsed),
                 format_duration(elapsed * double(p.total - p.done) / double(p.done)));
      std::fflush(stderr);
    };
    callbacks.qat_progress = [&](const compress::QatProgress& p) {
      if (!root) return;
      if (p.step == 1 || p.total_steps == 1) bar = ProgressBar("qat", p.total_steps, "tok");
      bar.update(p.step, p.tokens_done, fmt::format("loss {:.4f}", p.loss));
    };
    const compress::CompressReport report = compress_model(model, out, o, method, callbacks);
    bar.finish();
    if (!root) {
      fmt::print("rank {} of {}: trained {} steps; rank 0 writes {}\n", ranks.rank,
                 ranks.world_size, report.qat.steps, out);
      return 0;
    }

    const LinearFormat* format = find_linear_format(o.method);
    fmt::print("{:<24} {:>12} {:>28} {:>8}\n", "layer", "shape", "detail", "bpw");
    for (const auto& l : report.layers) {
      const bool over = format && !format->over_target_reason.empty() &&
                        l.bpw > l.target_bpw * format->over_target_slack;
      fmt::print("{:<24} {:>12} {:>28} {:>8.3f}{}\n", l.name, fmt::format("{}x{}", l.n_out, l.n_in),
                 l.detail, l.bpw,
                 over ? fmt::format("  (over target: {})", format->over_target_reason) : "");
    }
    fmt::print("linear layers: {:.4f} bits/weight over {} weights\n",
               double(report.linear_bits) / double(report.linear_params), report.linear_params);
    fmt::print("whole file: {:.4f} bits/param over {} parameters (embedding {}; head {})\n",
               double(report.whole_bits) / double(report.whole_params), report.whole_params,
               report.embedding, report.head);
    if (report.trained)
      fmt::print("QAT: {} steps, {} tokens, lr {:g}, loss {:.4f} -> {:.4f}, {:.1f} s{}\n",
                 report.qat.steps, report.qat.tokens, o.qat.lr, report.qat.first_loss,
                 report.qat.last_loss, report.qat.seconds,
                 report.qat.resumed_from_step
                     ? fmt::format(" (resumed at step {})", report.qat.resumed_from_step)
                     : "");
    fmt::print("wrote {} ({:.2f} MiB)\n", out, std::filesystem::file_size(out) / (1024.0 * 1024.0));
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
