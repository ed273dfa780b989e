// Interrupted and failing writes of the runtime (`subbit export`): a SIGKILL at any moment, or a
// full disk, never leaves a partial output under the output name, and a rerun writes the same
// bytes as an uninterrupted run. The compressor's writes are tested in tests/torch.
#include <chrono>
#include <random>

#include "test_support.h"

namespace subbit {
namespace {

namespace fs = std::filesystem;

const char* const kExportedFiles[] = {"config.json", "model.safetensors", "tokenizer.json"};

std::string export_command(const fs::path& out) {
  return testing::cli_path().string() + " export " + testing::embedded_sb8m().string() + " -o " +
         out.string();
}

// Entries of `dir` whose names start with `prefix`: the output and any temporary beside it.
std::vector<std::string> entries_starting_with(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().starts_with(prefix))
      names.push_back(entry.path().filename());
  return names;
}

TEST(Interrupted, ExportKilledAtRandomMomentsLeavesNoPartialCheckpoint) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const fs::path dir = testing::temp_dir("export-kill");
  const fs::path reference = dir / "reference", out = dir / "out";
  // Timed on a warm page cache: a cold first run would make the kill moments too late for the
  // runs after it.
  ASSERT_EQ(testing::run_command(export_command(dir / "warm-up")).exit_code, 0);
  const auto start = std::chrono::steady_clock::now();
  const auto r = testing::run_command(export_command(reference));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::mt19937 rng(2026);
  std::uniform_real_distribution<double> moment(0.0, 0.8 * seconds);
  int killed = 0;
  for (int i = 0; i < 6; ++i) {
    const double delay = moment(rng);
    killed += testing::run_and_kill_after(export_command(out), delay);
    // The folder appears only complete (renamed into place), so it is absent or whole.
    if (fs::exists(out)) {
      for (const char* name : kExportedFiles)
        EXPECT_EQ(testing::file_bytes(out / name), testing::file_bytes(reference / name))
            << name << " after a kill at " << delay << " s";
      fs::remove_all(out);
    }
  }
  // Runs vary with the machine's load, so some may finish before their moment; the test only
  // needs kills to have happened.
  EXPECT_GE(killed, 1) << "no run was killed before finishing (" << seconds << " s)";

  const auto rerun = testing::run_command(export_command(out));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.err;
  for (const char* name : kExportedFiles)
    EXPECT_TRUE(testing::file_bytes(out / name) == testing::file_bytes(reference / name)) << name;
  fs::remove_all(dir);
}

TEST(DiskFull, ExportFailsCleanlyAndLeavesNothing) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const fs::path dir = testing::temp_dir("export-full");
  // A 1 MiB limit on file size (RLIMIT_FSIZE) stands in for a full disk: writes past it fail
  // with EFBIG once SIGXFSZ, which would kill the process instead, is ignored.
  const auto r =
      testing::run_command("trap '' XFSZ; ulimit -f 1024; " + export_command(dir / "out"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("File too large"), std::string::npos) << r.err;
  EXPECT_TRUE(entries_starting_with(dir, "out").empty()) << "a failed export left files behind";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
