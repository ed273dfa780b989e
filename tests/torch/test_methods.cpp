// The compression-method table: every method writes a format the runtime knows, declares its
// options (with the defaults `subbit compress` has always had) and validates them before any
// model is loaded.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "compress/methods.h"
#include "formats/format_table.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::model_dir;

namespace fs = std::filesystem;
using namespace subbit::compress;

// The compression details a method records after parsing `args` (its defaults when empty).
nlohmann::json recorded(std::string_view method, const std::string& args) {
  CLI::App app;
  const auto m = find_compress_method(method).make();
  m->add_options(app);
  app.parse("app " + args, true);
  nlohmann::json details = nlohmann::json::object();
  m->record(details);
  return details;
}

testing::CommandResult compress(const std::string& args) {
  return testing::run_command(testing::cli_path().string() + " compress " + args);
}

TEST(CompressMethods, EveryMethodWritesAFormatOfTheRuntimeTable) {
  for (const CompressMethodRow& row : compress_methods()) {
    SCOPED_TRACE(std::string(row.name));
    EXPECT_NE(find_linear_format(row.name), nullptr);
    const auto method = row.make();
    // Exactly one way to build layers.
    EXPECT_NE(dynamic_cast<EncodingMethod*>(method.get()) == nullptr,
              dynamic_cast<TrainableMethod*>(method.get()) == nullptr);
  }
}

TEST(CompressMethods, DefaultsAreTheDocumentedOnes) {
  const nlohmann::json svd = {{"method", "auto"}, {"oversample", 16}, {"iterations", 8}};
  EXPECT_EQ(recorded("littlebit", ""),
            nlohmann::json({{"residual", true}, {"rank_granularity", 8}, {"svd", svd}}));
  EXPECT_EQ(recorded("sketch", ""), nlohmann::json({{"rule", "absmaxmin"},
                                                    {"rows", 2},
                                                    {"block", 32},
                                                    {"value_bits", 4},
                                                    {"salient_fraction", 0.0},
                                                    {"band_buckets", 256},
                                                    {"hash_version", 2}}));
  EXPECT_EQ(recorded("sketch", "--hash-version 1")["hash_version"], 1);
  EXPECT_EQ(recorded("sketch", "--block 16")["block"], 16);
  EXPECT_EQ(recorded("rtn", ""), nlohmann::json({{"bits", 4}}));
  EXPECT_EQ(recorded("sign", ""), nlohmann::json::object());
  EXPECT_EQ(recorded("littlebit", "--no-residual --rank-granularity 16"),
            nlohmann::json({{"residual", false}, {"rank_granularity", 16}, {"svd", svd}}));
  EXPECT_EQ(recorded("littlebit", "--svd exact --svd-iterations 4")["svd"],
            nlohmann::json({{"method", "exact"}, {"oversample", 16}, {"iterations", 4}}));
  EXPECT_EQ(recorded("rtn", "--bits 3")["bits"], 3);
}

TEST(CompressMethods, UnknownMethodErrorListsEveryMethod) {
  const auto r = compress("/nonexistent -o /nonexistent/x.gguf --method lattice");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error: unknown --method \"lattice\""), std::string::npos) << r.err;
  for (const CompressMethodRow& row : compress_methods())
    EXPECT_NE(r.err.find(row.name), std::string::npos) << r.err;
}

TEST(CompressMethods, BadOptionsAreRefusedBeforeTheModelLoads) {
  const std::string base = "/nonexistent -o /nonexistent/x.gguf ";
  const std::pair<std::string, std::string> cases[] = {
      {"--method rtn --bits 9", "--bits must be 2..8 for rtn, got 9"},
      {"--method sketch --rule widest", "unknown sketch rule \"widest\""},
      {"--method littlebit --surrogate relu",
       "--surrogate must be tanh, ste or frozen, got \"relu\""},
      {"--method littlebit --svd fast",
       "--svd must be exact, gram, randomized or auto, got \"fast\""},
      {"--method sketch --bpw 0", "--bpw must be in (0, 16], got 0"},
      {"--method sign --train-text /dev/null --train-tokens 64",
       "--method sign is post-training only"},
      {"--method littlebit --allocate fisher",
       "--allocate must be uniform or sensitivity, got \"fisher\""},
      {"--method littlebit --allocate sensitivity",
       "--allocate sensitivity needs --sensitivity-text"},
      {"--method rtn --allocate sensitivity --sensitivity-text /dev/null",
       "--allocate sensitivity: --method rtn"},
  };
  for (const auto& [args, error] : cases) {
    const auto r = compress(base + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("error: " + error), std::string::npos) << args << "\n" << r.err;
  }
}

TEST(CompressMethods, PostTrainingMethodsWriteFilesTheRuntimeLoads) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const auto dir = testing::temp_dir("methods");
  const std::string file = (dir / "rtn.gguf").string();
  const auto r =
      compress(model_dir("sb-8m").string() + " -o " + file + " --method rtn --bits 3 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 3-bit codes and two fp16 numbers per group of 128; every sb-8m row is a whole number of words.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("linear layers: ([0-9.]+) bits/weight")))
      << r.out;
  EXPECT_DOUBLE_EQ(std::stod(m[1]), 3.25);
  // A line per block with the time so far and the time left, also when stderr is not a terminal.
  EXPECT_TRUE(
      std::regex_search(r.err, std::regex("block 6/6 \\| elapsed [0-9]+:[0-9]{2} \\| ETA 0:00\n")))
      << r.err;
  const auto info = testing::run_command(testing::cli_path().string() + " info " + file);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"bits\":3"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("blk.5.ffn_down"), std::string::npos) << info.out;
  EXPECT_EQ(info.out.find("over target"), std::string::npos) << "rtn has no bits-per-weight target";
  fs::remove_all(dir);
}

TEST(CompressMethods, SketchHashVersionReachesTheFile) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const auto dir = testing::temp_dir("methods");
  for (const int version : {1, 2}) {
    const std::string file = (dir / fmt::format("sketch-v{}.gguf", version)).string();
    const auto r =
        compress(model_dir("sb-8m").string() + " -o " + file +
                 fmt::format(" --method sketch --bpw 0.5 --hash-version {} -t 1", version));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // Layers describe a hash version other than the default.
    const auto info = testing::run_command(testing::cli_path().string() + " info " + file);
    ASSERT_EQ(info.exit_code, 0) << info.err;
    EXPECT_EQ(info.out.find("hash v1") != std::string::npos, version == 1) << info.out;
    EXPECT_NE(info.out.find("\"hash_version\":" + std::to_string(version)), std::string::npos)
        << info.out;
  }
  fs::remove_all(dir);
}

// Each block's layers are built side by side, one thread each, so the file is the same bytes
// whatever --threads says (here with the Gram route, which auto picks on large layers).
TEST(CompressMethods, PostTrainingFilesDoNotDependOnTheThreadCount) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const auto dir = testing::temp_dir("threads");
  std::string bytes[2];
  for (int t : {1, 2}) {
    const fs::path file = dir / fmt::format("t{}.gguf", t);
    const auto r = compress(fmt::format("{} -o {} --method littlebit --bpw 0.55 --svd gram -t {}",
                                        model_dir("sb-8m").string(), file.string(), t));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::ifstream in(file, std::ios::binary);
    bytes[t - 1].assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_FALSE(bytes[0].empty());
  EXPECT_TRUE(bytes[0] == bytes[1]) << "-t 1 and -t 2 wrote different files";
  fs::remove_all(dir);
}

double number_after(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(pattern))) return -1;
  return std::stod(m[1]);
}

// sb-8m is tied: an embedding type without a head type stores the table once, for both uses;
// a head type of its own stores it twice, which info reports.
TEST(CompressMethods, EmbeddingAndHeadTypesAndTheWholeFileBudget) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const auto dir = testing::temp_dir("embed-types");
  const std::string cli = testing::cli_path().string();
  const std::string once = (dir / "once.gguf").string(), twice = (dir / "twice.gguf").string();
  auto r = compress(model_dir("sb-8m").string() + " -o " + once +
                    " --method littlebit --bpw 0.55 --embed-type rtn:4 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = testing::run_command(cli + " info " + once);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(info.out.find("stored twice"), std::string::npos) << info.out;
  const auto tensors = testing::run_command(cli + " info --tensors " + once);
  EXPECT_NE(tensors.out.find("\ntoken_embd "), std::string::npos) << tensors.out;
  EXPECT_EQ(tensors.out.find("\noutput "), std::string::npos)
      << "a tied head in the embedding's format is stored once";
  // The file's whole-file figure is what compress promised.
  const double whole = number_after(r.out, "whole file: ([0-9.]+) bits/param");
  EXPECT_NEAR(number_after(info.out, "whole file: ([0-9.]+) bits/param"), whole, 1e-4) << info.out;
  // 4-bit codes + two fp16 per 128 weights for the table, 0.55 for the linears: far below
  // BF16's 16.
  EXPECT_GT(whole, 0.55);
  EXPECT_LT(whole, 4.25);
  const auto run = testing::run_command(cli + " run " + once + " -p \"The history\" -n 4");
  EXPECT_EQ(run.exit_code, 0) << run.err;

  r = compress(model_dir("sb-8m").string() + " -o " + twice +
               " --method littlebit --bpw 0.55 --embed-type rtn:4 --head-type sign -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  info = testing::run_command(cli + " info --tensors " + twice);
  EXPECT_NE(info.out.find("stored twice"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\noutput "), std::string::npos) << info.out;

  // --budget whole: every stored bit over every parameter lands at (or just under) the target.
  const std::string budget = (dir / "budget.gguf").string();
  r = compress(model_dir("sb-8m").string() + " -o " + budget +
               " --method littlebit --bpw 1.2 --budget whole --embed-type rtn:2 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double reached = number_after(r.out, "whole file: ([0-9.]+) bits/param");
  EXPECT_LE(reached, 1.2 * 1.01) << r.out;
  EXPECT_GT(reached, 1.2 * 0.9) << r.out;

  for (const auto& [args, error] : std::vector<std::pair<std::string, std::string>>{
           {"--embed-type rtn9x", "--embed-type \"rtn9x\": unknown type"},
           {"--embed-type rtn", "needs a number"},
           {"--embed-type rtn:9", "--bits must be 2..8"},
           {"--embed-type rtn:1.5", "--bits must be 2..8"},
           {"--embed-type rtn:2.5", "widths by token frequency need --sensitivity-text"},
           {"--head-type littlebit:0", "must be a number in (0, 16]"},
           {"--budget file", "--budget must be linear or whole"},
           {"--budget whole --bpw 0.05 --embed-type dense", "already take"},
           // sb-8m's minimum ranks (8, two paths) alone take ~0.91 bits per parameter.
           {"--budget whole --bpw 0.8 --embed-type rtn:2", "minimum rank"},
       }) {
    r = compress(model_dir("sb-8m").string() + " -o " + (dir / "bad.gguf").string() +
                 " --method littlebit " + args);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_NE(r.err.find(error), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(dir / "bad.gguf")) << args;
  }
  fs::remove_all(dir);
}

// `rtn:2.5` on the tied table: each token's row gets 2..8 bits by its count in the training text,
// 2.5 on average; the file says so, runs, and --method rtn refuses a fractional width for the
// linear layers.
TEST(CompressMethods, TableWidthsByTokenFrequency) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(testing::calib_text());
  const auto dir = testing::temp_dir("rtn-frequency");
  const std::string cli = testing::cli_path().string(), out = (dir / "rows.gguf").string();
  auto r = compress(model_dir("sb-8m").string() + " -o " + out +
                    " --method littlebit --bpw 0.55 --embed-type rtn:2.5 --train-text " +
                    testing::calib_text().string() + " --frequency-tokens 20000 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("token frequencies from 20000 tokens"), std::string::npos)
      << r.out << r.err;
  const auto info = testing::run_command(cli + " info --tensors " + out);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_TRUE(std::regex_search(info.out, std::regex("rtn 2-[3-8] bits by row \\(mean 2\\.50\\)")))
      << info.out;
  EXPECT_NE(info.out.find("\"token_frequency_tokens\":20000"), std::string::npos) << info.out;
  const auto run = testing::run_command(cli + " run " + out + " -p \"The history\" -n 4");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  r = compress(model_dir("sb-8m").string() + " -o " + (dir / "bad.gguf").string() +
               " --method rtn --bits 2.5 --train-text " + testing::calib_text().string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("apply to --embed-type/--head-type only"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
  fs::remove_all(dir);
}

// Under a whole-file budget the tied table is sized by the method, so sensitivity allocates it
// beside the block linears, within the same budget.
TEST(CompressMethods, SensitivityUnderAWholeBudgetAllocatesTheTableToo) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(testing::calib_text());
  const auto dir = testing::temp_dir("whole-sensitivity");
  const std::string out = (dir / "allocated.gguf").string();
  const auto r = compress(model_dir("sb-8m").string() + " -o " + out +
                          " --method littlebit --bpw 1.2 --budget whole --allocate sensitivity"
                          " --sensitivity-text " +
                          testing::calib_text().string() + " --sensitivity-tokens 256 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LE(number_after(r.out, "whole file: ([0-9.]+) bits/param"), 1.2 * 1.01) << r.out;
  const auto info = testing::run_command(testing::cli_path().string() + " info " + out);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(info.out, m, std::regex("compression: +(\\{.*\\})"))) << info.out;
  const nlohmann::json details = nlohmann::json::parse(m[1].str());
  const nlohmann::json& layers = details.at("allocation").at("layers");
  ASSERT_EQ(layers.size(), size_t(6 * kLinearsPerBlock + 1)) << "sb-8m's 6 blocks and the table";
  const nlohmann::json& table = layers.back();
  EXPECT_EQ(table.at("layer"), "token_embd");
  EXPECT_GT(table.at("kl").get<double>(), 0);
  // The table's target is its own, not the linears' uniform one.
  EXPECT_NE(table.at("target_bpw").get<double>(), details.at("target_bpw").get<double>());
  // info marks a layer over target against its own allocated target, not the uniform one.
  const auto tensors =
      testing::run_command(testing::cli_path().string() + " info --tensors " + out);
  ASSERT_EQ(tensors.exit_code, 0) << tensors.err;
  int checked = 0;
  for (const nlohmann::json& layer : layers) {
    const std::string name = layer.at("layer");
    if (name == "token_embd") continue;
    std::smatch line;
    ASSERT_TRUE(std::regex_search(
        tensors.out, line, std::regex("\n" + name + " +littlebit +[0-9.]+ K +([0-9.]+) [^\n]*")))
        << name << "\n"
        << tensors.out;
    const bool marked = line[0].str().find("[over target") != std::string::npos;
    EXPECT_EQ(marked, std::stod(line[1]) > layer.at("target_bpw").get<double>() * 1.001)
        << line[0].str();
    ++checked;
  }
  EXPECT_EQ(checked, 6 * kLinearsPerBlock);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
