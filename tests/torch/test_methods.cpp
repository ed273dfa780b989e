// The compression-method table: every method writes a format the runtime knows, declares its
// options (with the defaults `subbit compress` has always had) and validates them before any
// model is loaded.
#include <nlohmann/json.hpp>

#include <regex>

#include "compress/methods.h"
#include "formats/format_table.h"
#include "test_support.h"

namespace subbit {
namespace {

namespace fs = std::filesystem;
using namespace subbit::compress;

fs::path sb8m() { return testing::shared_dir() / "models" / "sb-8m"; }

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
  EXPECT_EQ(recorded("littlebit", ""), nlohmann::json({{"residual", true}, {"rank_granularity", 8}}));
  EXPECT_EQ(recorded("sketch", ""), nlohmann::json({{"rule", "absmaxmin"},
                                                    {"rows", 2},
                                                    {"block", 16},
                                                    {"value_bits", 4},
                                                    {"salient_fraction", 0.0},
                                                    {"band_buckets", 256}}));
  EXPECT_EQ(recorded("rtn", ""), nlohmann::json({{"bits", 4}}));
  EXPECT_EQ(recorded("sign", ""), nlohmann::json::object());
  EXPECT_EQ(recorded("littlebit", "--no-residual --rank-granularity 16"),
            nlohmann::json({{"residual", false}, {"rank_granularity", 16}}));
  EXPECT_EQ(recorded("rtn", "--bits 3")["bits"], 3);
}

TEST(CompressMethods, UnknownMethodErrorListsEveryMethod) {
  const auto r = compress("/nonexistent -o /nonexistent/x.gguf --method lattice");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error: unknown --method \"lattice\""), std::string::npos) << r.err;
  for (const CompressMethodRow& row : compress_methods()) EXPECT_NE(r.err.find(row.name), std::string::npos) << r.err;
}

TEST(CompressMethods, BadOptionsAreRefusedBeforeTheModelLoads) {
  const std::string base = "/nonexistent -o /nonexistent/x.gguf ";
  const std::pair<std::string, std::string> cases[] = {
      {"--method rtn --bits 9", "--bits must be 2..8 for rtn, got 9"},
      {"--method sketch --rule widest", "unknown sketch rule \"widest\""},
      {"--method littlebit --surrogate relu", "--surrogate must be tanh or ste, got \"relu\""},
      {"--method sketch --bpw 0", "--bpw must be in (0, 16], got 0"},
      {"--method sign --train-text /dev/null --train-tokens 64", "--method sign is post-training only"},
  };
  for (const auto& [args, error] : cases) {
    const auto r = compress(base + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("error: " + error), std::string::npos) << args << "\n" << r.err;
  }
}

TEST(CompressMethods, PostTrainingMethodsWriteFilesTheRuntimeLoads) {
  SKIP_UNLESS_EXISTS(sb8m() / "config.json");
  const auto dir = testing::temp_dir("methods");
  const std::string file = (dir / "rtn.gguf").string();
  const auto r = compress(sb8m().string() + " -o " + file + " --method rtn --bits 3 -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 3-bit codes and two fp16 numbers per group of 128; every sb-8m row is a whole number of words.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("linear layers: ([0-9.]+) bits/weight"))) << r.out;
  EXPECT_DOUBLE_EQ(std::stod(m[1]), 3.25);
  const auto info = testing::run_command(testing::cli_path().string() + " info " + file);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"bits\":3"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("blk.5.ffn_down"), std::string::npos) << info.out;
  EXPECT_EQ(info.out.find("over target"), std::string::npos) << "rtn has no bits-per-weight target";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
