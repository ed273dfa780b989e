// Context length: a --ctx beyond max_position_embeddings is refused naming the model and the
// field, the KV cache memory is reported, and scoring in chunks at long contexts (8192 on a
// tiny random model) gives the same result as one pass.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/loader.h"
#include "model/perplexity.h"
#include "model/random_checkpoint.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::cli;
using testing::model_dir;

namespace fs = std::filesystem;
using testing::run_command;

void expect_refused(const testing::CommandResult& r, const std::string& model,
                    const std::string& option) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: " + model + ": " + option, 0), 0u) << r.err;
  EXPECT_NE(r.err.find("max_position_embeddings = 512"), std::string::npos) << r.err;
}

TEST(Context, BeyondMaxPositionEmbeddingsRefused) {
  const fs::path model = model_dir("stories260K");
  const auto text = testing::shared_dir() / "text" / "tinystories_validation_100.txt";
  SKIP_UNLESS_EXISTS(model / "config.json");
  SKIP_UNLESS_EXISTS(text);
  const std::string m = model.string();
  expect_refused(run_command(cli() + " ppl " + m + " --text " + text.string() + " --ctx 513"), m,
                 "--ctx 513");
  expect_refused(run_command(cli() + " run " + m + " -p 'Once' --ctx 600 -n 4"), m, "--ctx 600");
  expect_refused(run_command(cli() + " run " + m + " -p 'Once' -n 600"), m, "prompt + -n");
  expect_refused(run_command(cli() + " info " + m + " --ctx 1024"), m, "--ctx 1024");
  expect_refused(run_command(cli() + " bench " + m + " -p 1024 -n 4 -r 1"), m, "-p 1024");
  // Within the maximum but below what the prompt and -n need.
  const auto r = run_command(cli() + " run " + m + " -p 'Once upon a time' --ctx 8 -n 8");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("exceed --ctx 8"), std::string::npos) << r.err;
  // At the maximum it runs.
  EXPECT_EQ(
      run_command(cli() + " ppl " + m + " --text " + text.string() + " --ctx 512 --max-windows 1")
          .exit_code,
      0);
}

TEST(Context, KvCacheMemoryReported) {
  // stories260K: 5 layers, 4 kv heads of 8: 2 x 5 x 4 x 8 x 4 bytes = 1280 bytes per position.
  const fs::path model = model_dir("stories260K");
  SKIP_UNLESS_EXISTS(model / "config.json");
  auto r = run_command(cli() + " info " + model.string() + " --ctx 256");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(
      r.out.find("kv cache:     640.00 KiB at max ctx 512 (f32 keys + values, 1.25 KiB per token); "
                 "320.00 KiB at --ctx 256"),
      std::string::npos)
      << r.out;
  r = run_command(cli() + " bench " + model.string() + " -p 64 -n 16 -r 1 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("kv cache: 0.08 MiB for pp64, 0.02 MiB for tg16"), std::string::npos)
      << r.out;

  // Llama-3.2-1B's shape at 8192 positions: 16 layers x 8 kv heads x 64 x 2 x 4 bytes = 512 MiB.
  LlamaConfig c;
  c.num_layers = 16;
  c.num_kv_heads = 8;
  c.head_dim = 64;
  EXPECT_EQ(RunState::bytes_for(c, 8192), int64_t(512) << 20);
}

// A tiny random Llama with max_position_embeddings 8192 and the SmolLM2 tokenizer.
fs::path tiny_long_context_model() {
  const fs::path dir = testing::temp_dir("long-ctx");
  const nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                                 {"model_type", "llama"},
                                 {"hidden_size", 64},
                                 {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2},
                                 {"intermediate_size", 96},
                                 {"vocab_size", 49152},
                                 {"max_position_embeddings", 8192},
                                 {"rms_norm_eps", 1e-5},
                                 {"rope_theta", 500000.0},
                                 {"tie_word_embeddings", true}};
  // A larger std than a real model's init so attention is not uniform.
  write_random_checkpoint(dir, config, {0.2, 1, model_dir("smollm2-tokenizer")});
  return dir;
}

TEST(Context, ChunkedScoringEqualsOnePass) {
  SKIP_UNLESS_EXISTS(model_dir("smollm2-tokenizer") / "tokenizer.json");
  const fs::path dir = tiny_long_context_model();
  const ModelBundle bundle = load_model(dir);
  const LlamaModel& model = *bundle.model;
  const int64_t ctx = 2 * kScoringChunk + 77, vocab = model.config().vocab_size;
  std::mt19937 rng(5);
  std::vector<int32_t> tokens(ctx);
  for (auto& t : tokens) t = int32_t(rng() % 49152);
  RunState cache(model.config(), ctx);
  std::vector<float> logits(ctx * vocab);
  model.forward(tokens, 0, cache, logits.data(), /*all_logits=*/true);
  double sum = 0;
  for (int64_t p = 1; p < ctx; ++p)
    sum += token_nll(logits.data() + (p - 1) * vocab, vocab, tokens[p]);
  const PerplexityResult r = evaluate_perplexity(model, tokens, ctx, 1);
  EXPECT_EQ(r.scored_tokens, ctx - 1);
  EXPECT_NEAR(r.nll_mean, sum / double(ctx - 1), 1e-6 * r.nll_mean);
  fs::remove_all(dir);
}

TEST(Context, PplAndRunAt8192) {
  SKIP_UNLESS_EXISTS(model_dir("smollm2-tokenizer") / "tokenizer.json");
  const auto text = testing::shared_dir() / "text" / "train" / "calib.txt";
  SKIP_UNLESS_EXISTS(text);
  const fs::path dir = tiny_long_context_model();
  auto r = run_command(cli() + " ppl " + dir.string() + " --text " + text.string() +
                       " --ctx 8192 --max-windows 1 -t 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1));
  EXPECT_EQ(j["scored_tokens"], 8191);
  EXPECT_TRUE(std::isfinite(j["ppl"].get<double>()));
  // A prompt of some 5000-7000 tokens plus 16 generated, in a context of 8192.
  {
    std::ifstream in(text);
    std::string prompt(20000, '\0');
    in.read(prompt.data(), std::streamsize(prompt.size()));
    std::ofstream(dir / "prompt.txt") << prompt.substr(0, prompt.rfind(' '));
  }
  r = run_command(cli() + " run " + dir.string() + " -p \"$(cat " + (dir / "prompt.txt").string() +
                  ")\" -n 16 --ctx 8192 --ignore-eos -t 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("generated: 16 tokens"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
