#pragma once
// Locating shared test material. Tests call skip_unless_exists() so a missing file becomes a
// clean GTEST_SKIP with a message, never an obscure failure.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "formats/linear.h"

namespace subbit::testing {

// $SUBBIT_SHARED if set, else the CMake-configured SUBBIT_SHARED_DIR (default ../shared).
std::filesystem::path shared_dir();
std::filesystem::path source_dir();
std::filesystem::path cli_path();  // the built `subbit` executable
inline std::string cli() { return cli_path().string(); }

// Shared material by name: a checkpoint under shared_dir()/models, the calibration text.
inline std::filesystem::path model_dir(const std::string& name) {
  return shared_dir() / "models" / name;
}
inline std::filesystem::path calib_text() { return shared_dir() / "text" / "train" / "calib.txt"; }
// The sb-8m copy in the repository (models/sb-8m), present in every checkout.
inline std::filesystem::path embedded_sb8m() { return source_dir() / "models" / "sb-8m"; }

// Runs a shell command, returns its exit code; stdout and stderr are captured.
struct CommandResult {
  int exit_code;
  std::string out;
  std::string err;
};
CommandResult run_command(const std::string& command);
// A command that must fail cleanly: exit 1 and an "error: ..." message containing `fragment`.
void expect_clean_failure(const CommandResult& r, const std::string& fragment);
// `subbit ARGS`, expected to exit 0; its standard output.
std::string run_cli(const std::string& args);

// The message of the subbit::Error that `action` throws; "(no error thrown)" when none.
std::string error_of(const std::function<void()>& action);
// Expects each part somewhere in `message`.
void expect_contains(const std::string& message, std::initializer_list<std::string> parts);

// Fresh and unique per call; removed (with what it holds) when the test process exits.
std::filesystem::path temp_dir(const std::string& tag);

// Starts `command` (a shell command line, output discarded), sends it SIGKILL after `seconds`
// unless it has finished by then, and reaps it. Returns true when the kill ended it.
bool run_and_kill_after(const std::string& command, double seconds);
// The same, killing it as soon as `ready()` holds (polled every 2 ms) instead of after a delay.
bool run_and_kill_when(const std::string& command, const std::function<bool()>& ready);
// A whole file's bytes ("" when absent), for byte-for-byte comparisons.
std::string file_bytes(const std::filesystem::path& file);
// Writes `bytes` as the whole file; a failed write fails the test.
void write_file(const std::filesystem::path& file, const std::string& bytes);
std::vector<uint8_t> read_all(const std::filesystem::path& file);
template <typename T>
std::vector<uint8_t> to_bytes(const std::vector<T>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// The layer's dense matrix, (n_out, n_in).
std::vector<float> dequantized(const Linear& layer);

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

#define SKIP_UNLESS_EXISTS(path)                                                 \
  do {                                                                           \
    if (!std::filesystem::exists(path))                                          \
      GTEST_SKIP() << "shared file absent: " << (path).string() << " (skipped)"; \
  } while (0)
