// The command-line tool end to end: real output on good input, a clear error and a non-zero
// exit (never a crash) on bad input.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "io/text_file.h"
#include "model/loader.h"
#include "model/perplexity.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::cli;
using testing::expect_clean_failure;
using testing::model_dir;

namespace fs = std::filesystem;
using testing::run_command;

// A copy of a model directory made of symlinks, minus `omit`, so single files can be broken.
fs::path linked_copy(const fs::path& source, const std::string& omit) {
  const fs::path dir = testing::temp_dir("model");
  for (const auto& entry : fs::directory_iterator(source))
    if (entry.path().filename() != omit)
      fs::create_symlink(entry.path(), dir / entry.path().filename());
  return dir;
}

TEST(Cli, GreedyRunPrintsPromptAndGoldenContinuation) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "golden.json");
  const auto golden =
      nlohmann::json::parse(std::ifstream(model_dir("sb-8m") / "golden.json"))["greedy"];
  const auto r = run_command(cli() + " run " + model_dir("sb-8m").string() + " -p '" +
                             golden["prompt"].get<std::string>() + "' -n 48 --temp 0 -t 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, golden["text"].get<std::string>() + "\n");
  EXPECT_NE(r.err.find("t/s"), std::string::npos);
}

TEST(Cli, PplJsonLastLine) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  const auto text = testing::shared_dir() / "text" / "tinystories_validation_100.txt";
  SKIP_UNLESS_EXISTS(text);
  const auto r = run_command(cli() + " ppl " + model_dir("stories260K").string() + " --text " +
                             text.string() + " --ctx 256 --max-windows 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string last = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  const auto j = nlohmann::json::parse(last);
  for (const char* key :
       {"ppl", "nll_mean", "scored_tokens", "text_tokens", "ctx", "windows", "seconds"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["windows"], 3);
  EXPECT_EQ(j["ctx"], 256);
  EXPECT_EQ(j["scored_tokens"], 3 * 255);
  // The values, against the library computing the same evaluation in this process.
  const ModelBundle bundle = load_model(model_dir("stories260K"));
  const auto tokens = bundle.tokenizer->encode(read_text_file(text), true);
  const PerplexityResult expected = evaluate_perplexity(*bundle.model, tokens, 256, 3);
  EXPECT_EQ(j["text_tokens"].get<int64_t>(), int64_t(tokens.size()));
  EXPECT_NEAR(j["nll_mean"].get<double>(), expected.nll_mean, 1e-12 * expected.nll_mean);
  EXPECT_NEAR(j["ppl"].get<double>(), expected.ppl, 1e-12 * expected.ppl);
  EXPECT_NEAR(j["ppl"].get<double>(), std::exp(j["nll_mean"].get<double>()), 1e-12 * expected.ppl);
  EXPECT_GT(j["seconds"].get<double>(), 0.0);
}

TEST(Cli, InfoAndBenchRun) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  auto r = run_command(cli() + " info " + model_dir("stories260K").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // stories260K's config.json, and its 5 x 7 fp32 linear layers: 5 · (2·64·64 + 2·32·64 + 3·172·64)
  // = 226,560 weights of 32 bits.
  EXPECT_NE(
      r.out.find(
          "5 layers, hidden 64, heads 8 / kv 4 (head_dim 8), ffn 172, vocab 512, max ctx 512"),
      std::string::npos)
      << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.out, m, std::regex("linear layers +([0-9]+) +([0-9.]+ K) +[0-9.]+ KiB +([0-9.]+)  F32")))
      << r.out;
  EXPECT_EQ(m[1], "35");
  EXPECT_EQ(m[2], "226.56 K");
  EXPECT_EQ(m[3], "32.000");
  r = run_command(cli() + " bench " + model_dir("stories260K").string() +
                  " -p 32 -n 8 -r 2 -t 1,2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // One row per test and thread count, each with a positive speed.
  for (const std::string test : {"pp32", "tg8"}) {
    const std::regex row("\\| +([12]) \\| +" + test + " \\| +([0-9.]+) ± +([0-9.]+) \\|");
    int rows = 0;
    for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), row);
         it != std::sregex_iterator(); ++it, ++rows)
      EXPECT_GT(std::stod((*it)[2]), 0.0) << it->str();
    EXPECT_EQ(rows, 2) << test << "\n" << r.out;
  }
}

TEST(Cli, MissingTokenizer) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  const auto dir = linked_copy(model_dir("stories260K"), "tokenizer.json");
  expect_clean_failure(run_command(cli() + " info " + dir.string()), "tokenizer.json");
  fs::remove_all(dir);
}

TEST(Cli, TruncatedSafetensors) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "model.safetensors");
  const auto dir = linked_copy(model_dir("stories260K"), "model.safetensors");
  fs::copy_file(model_dir("stories260K") / "model.safetensors", dir / "model.safetensors");
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") / 2);
  expect_clean_failure(run_command(cli() + " info " + dir.string()), "model.safetensors");
  fs::remove_all(dir);
}

TEST(Cli, NanInConfig) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  const auto dir = linked_copy(model_dir("stories260K"), "config.json");
  std::ifstream in(model_dir("stories260K") / "config.json");
  std::string config((std::istreambuf_iterator<char>(in)), {});
  config.replace(config.find("1e-05"), 5, "NaN");
  std::ofstream(dir / "config.json") << config;
  expect_clean_failure(run_command(cli() + " info " + dir.string()), "config.json");
  fs::remove_all(dir);
}

TEST(Cli, TextNotUtf8) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  const auto dir = testing::temp_dir("text");
  std::ofstream(dir / "bad.txt", std::ios::binary) << "Once upon a time \xff\xfe there was";
  expect_clean_failure(run_command(cli() + " ppl " + model_dir("stories260K").string() +
                                   " --text " + (dir / "bad.txt").string()),
                       "UTF-8");
  fs::remove_all(dir);
}

TEST(Cli, CtxLargerThanModelMaximum) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  const auto text = testing::shared_dir() / "text" / "tinystories_validation_100.txt";
  SKIP_UNLESS_EXISTS(text);
  expect_clean_failure(run_command(cli() + " ppl " + model_dir("stories260K").string() +
                                   " --text " + text.string() + " --ctx 4096"),
                       "maximum context");
}

TEST(Cli, MissingModelAndBadArguments) {
  expect_clean_failure(run_command(cli() + " info /nonexistent/model"), "/nonexistent/model");
  const auto r = run_command(cli() + " ppl");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 134);  // not an abort
}

}  // namespace
}  // namespace subbit
