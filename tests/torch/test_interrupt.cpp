// Interrupted and failing writes of the compressor: `subbit compress` (post-training and QAT
// with checkpoints) killed with SIGKILL at random moments never leaves a partial output under
// the output name, a rerun (resuming from the last checkpoint) writes the same bytes as an
// uninterrupted run, and a full disk gives a clear error and no output.
#include <chrono>
#include <random>

#include "test_support.h"

namespace subbit {
namespace {

using testing::calib_text;
using testing::model_dir;

namespace fs = std::filesystem;

std::string compress_command(const std::string& args, const fs::path& out) {
  return testing::cli_path().string() + " compress " + model_dir("sb-8m").string() + " " + args +
         " -t 1 -o " + out.string();
}

// Runs the command to completion and returns how long it took.
double timed_run(const std::string& command) {
  const auto start = std::chrono::steady_clock::now();
  const auto r = testing::run_command(command);
  EXPECT_EQ(r.exit_code, 0) << command << "\n" << r.err;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Kills `args` at random moments, `kills` times in a row (each run resuming from what the last
// left), then lets it finish: after every kill the output is absent or whole, and finally it
// equals an uninterrupted run's, byte for byte.
void expect_kills_leave_no_output_and_rerun_identical(const std::string& args, int kills,
                                                      const std::string& tag) {
  const fs::path dir = testing::temp_dir(tag);
  const fs::path reference = dir / "reference.gguf", out = dir / "out.gguf";
  const double seconds = timed_run(compress_command(args, reference));
  ASSERT_TRUE(fs::exists(reference));

  std::mt19937 rng(7);
  std::uniform_real_distribution<double> moment(0.05 * seconds, 0.9 * seconds);
  int killed = 0;
  for (int i = 0; i < kills; ++i) {
    const double delay = moment(rng);
    if (!testing::run_and_kill_after(compress_command(args, out), delay)) break;  // it finished
    ++killed;
    // The file appears only complete (renamed into place): a kill after the rename, while the
    // report prints or memory is freed, leaves the finished file, never a partial one.
    if (fs::exists(out)) {
      EXPECT_TRUE(testing::file_bytes(out) == testing::file_bytes(reference))
          << "a run killed at " << delay << " s left a file unlike the uninterrupted run's";
      fs::remove(out);
    }
  }
  EXPECT_GE(killed, 1) << "no run was killed before finishing (" << seconds << " s)";
  timed_run(compress_command(args, out));
  EXPECT_TRUE(testing::file_bytes(out) == testing::file_bytes(reference))
      << "the rerun after " << killed << " kills wrote a different file";
  EXPECT_FALSE(fs::exists(out.string() + ".ckpt")) << "the checkpoint outlived the finished run";
  fs::remove_all(dir);
}

TEST(Interrupted, PostTrainingCompressKilledAtRandomMoments) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  expect_kills_leave_no_output_and_rerun_identical("--method sign", 4, "kill-sign");
}

TEST(Interrupted, QatWithCheckpointsKilledAtRandomMomentsResumesToTheSameFile) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  expect_kills_leave_no_output_and_rerun_identical(
      "--method littlebit --bpw 0.3 --train-text " + calib_text().string() +
          " --train-tokens 2048 --seq 128 --batch 2 --lr 2e-3 --checkpoint-every 2",
      3, "kill-qat");
}

// Post-training compression checkpoints every finished block: killed after its third, a rerun
// builds only the rest and writes the uninterrupted run's bytes.
TEST(Interrupted, PostTrainingResumesAfterItsLastSavedBlock) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = testing::temp_dir("resume-blocks");
  const fs::path reference = dir / "reference.gguf", out = dir / "out.gguf";
  const fs::path checkpoint = out.string() + ".ckpt";
  const std::string args = "--method littlebit --bpw 0.55";
  timed_run(compress_command(args, reference));
  ASSERT_TRUE(testing::run_and_kill_when(compress_command(args, out), [&] {
    return fs::exists(checkpoint / "block-0002.gguf");
  })) << "the run finished before it could be killed";
  EXPECT_FALSE(fs::exists(out));
  const auto r = testing::run_command(compress_command(args, out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming from " + checkpoint.string() + ": blocks 0-"), std::string::npos)
      << r.err;
  EXPECT_TRUE(testing::file_bytes(out) == testing::file_bytes(reference));
  EXPECT_FALSE(fs::exists(checkpoint)) << "the checkpoint outlived the finished run";
  fs::remove_all(dir);
}

// --checkpoint may name a folder of the user's: only the block files are removed from it.
TEST(Interrupted, AFinishedRunRemovesOnlyItsOwnBlockFiles) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = testing::temp_dir("resume-shared-folder");
  testing::write_file(dir / "notes.txt", "the user's");
  testing::run_cli("compress " + model_dir("sb-8m").string() + " --method sign -t 1 -o " +
                   (dir / "out.gguf").string() + " --checkpoint " + dir.string());
  EXPECT_TRUE(fs::exists(dir / "out.gguf"));
  EXPECT_EQ(testing::file_bytes(dir / "notes.txt"), "the user's");
  EXPECT_FALSE(fs::exists(dir / "block-0000.gguf"));
  fs::remove_all(dir);
}

TEST(Interrupted, APostTrainingCheckpointOfAnotherRunIsRefused) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = testing::temp_dir("resume-other");
  const fs::path out = dir / "out.gguf", checkpoint = out.string() + ".ckpt";
  ASSERT_TRUE(
      testing::run_and_kill_when(compress_command("--method littlebit --bpw 0.55", out),
                                 [&] { return fs::exists(checkpoint / "block-0000.gguf"); }));
  testing::expect_clean_failure(
      testing::run_command(compress_command("--method littlebit --bpw 0.3", out)),
      checkpoint.string() + ": the checkpoint was written by another run");
  EXPECT_FALSE(fs::exists(out));
  fs::remove_all(checkpoint);
  testing::write_file(checkpoint, "a QAT checkpoint");
  testing::expect_clean_failure(
      testing::run_command(compress_command("--method littlebit --bpw 0.3", out)),
      checkpoint.string() + ": exists and is not a post-training checkpoint folder");
  EXPECT_FALSE(fs::exists(out));
  fs::remove_all(dir);
}

TEST(DiskFull, CompressFailsCleanlyAndLeavesNothing) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = testing::temp_dir("compress-full");
  // RLIMIT_FSIZE of 1 MiB (the file is over 4 MiB) stands in for a full disk; SIGXFSZ ignored,
  // writes past the limit fail with EFBIG.
  const auto r = testing::run_command("trap '' XFSZ; ulimit -f 1024; " +
                                      compress_command("--method sign", dir / "out.gguf"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("File too large"), std::string::npos) << r.err;
  // Only the finished blocks' checkpoint stays, for the rerun to resume from.
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename(), "out.gguf.ckpt") << "a failed compress left files behind";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
