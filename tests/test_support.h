#pragma once
// Locating shared test material. Tests call skip_unless_exists() so a missing file becomes a
// clean GTEST_SKIP with a message, never an obscure failure.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace subbit::testing {

// $SUBBIT_SHARED if set, else the CMake-configured SUBBIT_SHARED_DIR (default ../shared).
std::filesystem::path shared_dir();
std::filesystem::path source_dir();
std::filesystem::path cli_path();  // the built `subbit` executable

// Runs a shell command, returns its exit code; stdout and stderr are captured.
struct CommandResult {
  int exit_code;
  std::string out;
  std::string err;
};
CommandResult run_command(const std::string& command);

std::filesystem::path temp_dir(const std::string& tag);  // fresh, unique per call

// Starts `command` (a shell command line, output discarded), sends it SIGKILL after `seconds`
// unless it has finished by then, and reaps it. Returns true when the kill ended it.
bool run_and_kill_after(const std::string& command, double seconds);
// A whole file's bytes ("" when absent), for byte-for-byte comparisons.
std::string file_bytes(const std::filesystem::path& file);

// n samples of a standard normal, for kernel tests against their references.
std::vector<float> random_vector(size_t n, std::mt19937& rng);
// A random sign matrix (rows, cols) packed as ops/sign_matmul.h lays it out.
std::vector<uint64_t> random_signs(int64_t rows, int64_t cols, std::mt19937& rng);

// Restricts Highway's dynamic dispatch to one target for the lifetime of the object, so the
// AVX2 / SSE4 / scalar code paths are exercised on an AVX-512 machine too. Iterate over
// hwy::SupportedAndGeneratedTargets() to test every target compiled in that the CPU runs.
class ScopedTarget {
 public:
  explicit ScopedTarget(int64_t target) { hwy::SetSupportedTargetsForTest(target); }
  ~ScopedTarget() { hwy::SetSupportedTargetsForTest(0); }
  ScopedTarget(const ScopedTarget&) = delete;
  ScopedTarget& operator=(const ScopedTarget&) = delete;
};

}  // namespace subbit::testing

#define SKIP_UNLESS_EXISTS(path)                                              \
  do {                                                                        \
    if (!std::filesystem::exists(path))                                       \
      GTEST_SKIP() << "shared file absent: " << (path).string() << " (skipped)"; \
  } while (0)
