// UltraSketch through the whole pipeline on sb-8m: calibration, the file, export, determinism,
// bit accounting and QAT.
#include <regex>

#include "export_check.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::calib_text;
using testing::model_dir;

namespace fs = std::filesystem;

fs::path dev_text() { return testing::shared_dir() / "text" / "wikitext2.valid.tokens"; }

class SketchFile : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(model_dir("sb-8m") / "config.json") || !fs::exists(calib_text()) ||
        !fs::exists(dev_text()))
      GTEST_SKIP() << "shared model or text absent (skipped)";
    dir_ = testing::temp_dir("sketch");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string compress(const std::string& name, const std::string& extra) {
    const std::string file = (dir_ / name).string();
    last_output_ = testing::run_cli("compress " + model_dir("sb-8m").string() + " -o " + file +
                                    " --method sketch --bpw 0.5 --calib-text " +
                                    calib_text().string() + " --calib-tokens 4096 " + extra);
    return file;
  }
  fs::path dir_;
  std::string last_output_;
};

TEST_F(SketchFile, PerplexityEqualsDenseExportAndBitsMeetTarget) {
  const std::string file = compress("s.gguf", "--salient-frac 0.05");
  testing::run_cli("export " + file + " -o " + (dir_ / "exported").string());
  testing::expect_export_holds_the_files_model(file, dir_ / "exported", dev_text(), 256, 6);
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(last_output_, m, std::regex("linear layers: ([0-9.]+) bits/weight")))
      << last_output_;
  EXPECT_NEAR(std::stod(m[1]), 0.5, 0.005)
      << "bits per weight of the linear layers, all stored bits counted";
  EXPECT_NE(testing::run_cli("info " + file).find("sketch"), std::string::npos);
}

TEST_F(SketchFile, SameSeedSameFile) {
  const std::string a = compress("a.gguf", ""), b = compress("b.gguf", "");
  EXPECT_TRUE(testing::file_bytes(a) == testing::file_bytes(b));
  const std::string c = compress("c.gguf", "--sketch-seed 7");
  EXPECT_FALSE(testing::file_bytes(a) == testing::file_bytes(c));
}

TEST_F(SketchFile, QatLowersTheDistillationLoss) {
  compress("q.gguf", "--train-text " + calib_text().string() +
                         " --train-tokens 3072 --seq 128 --batch 2 --lr 3e-3 --no-checkpoint");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(last_output_, m, std::regex("loss ([0-9.]+) -> ([0-9.]+)")))
      << last_output_;
  EXPECT_LT(std::stod(m[2]), std::stod(m[1]));
}

}  // namespace
}  // namespace subbit
