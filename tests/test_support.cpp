#include "test_support.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "ops/sign_matmul.h"

namespace subbit::testing {

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("SUBBIT_SHARED"); env != nullptr && *env != '\0') return env;
  return SUBBIT_SHARED_DIR;
}
std::filesystem::path source_dir() { return SUBBIT_SOURCE_DIR; }
std::filesystem::path cli_path() { return SUBBIT_CLI; }

static std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

// Every directory temp_dir hands out is removed when the test process exits, so that a test
// which fails half-way (or keeps its files to the end) leaves nothing in the temp directory.
class TempDirs {
 public:
  ~TempDirs() {
    if (::getpid() != owner_) return;  // a forked child leaves its parent's directories alone
    for (const auto& dir : dirs_) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  }
  void add(std::filesystem::path dir) {
    const std::lock_guard<std::mutex> lock(mutex_);
    dirs_.push_back(std::move(dir));
  }

 private:
  const pid_t owner_ = ::getpid();
  std::mutex mutex_;
  std::vector<std::filesystem::path> dirs_;
};

TempDirs& temp_dirs() {
  static TempDirs dirs;
  return dirs;
}

}  // namespace

std::filesystem::path temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir =
      std::filesystem::temp_directory_path() /
      ("subbit-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  temp_dirs().add(dir);
  return dir;
}

std::vector<float> random_vector(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<uint64_t> random_signs(int64_t rows, int64_t cols, std::mt19937& rng) {
  const auto values = random_vector(size_t(rows * cols), rng);
  std::vector<uint64_t> words(size_t(rows * sign_words_per_row(cols)));
  pack_signs(values.data(), rows, cols, words.data());
  return words;
}

CommandResult run_command(const std::string& command) {
  auto dir = temp_dir("cmd");
  std::string full = command + " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
  int status = std::system(full.c_str());
  CommandResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                  slurp(dir / "out"), slurp(dir / "err")};
  std::filesystem::remove_all(dir);
  return r;
}

bool run_and_kill_after(const std::string& command, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  return run_and_kill_when(command, [&] { return std::chrono::steady_clock::now() >= deadline; });
}

bool run_and_kill_when(const std::string& command, const std::function<bool()>& ready) {
  const std::string line = "exec " + command + " >/dev/null 2>&1";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (pid < 0) return false;
  int status = 0;
  // Poll rather than wait for `ready` alone, so a run that ends early is reaped (not killed).
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (ready()) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

std::string file_bytes(const std::filesystem::path& file) { return slurp(file); }

void write_file(const std::filesystem::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_TRUE(out.good()) << "cannot write " << file;
}

std::vector<uint8_t> read_all(const std::filesystem::path& file) {
  const std::string bytes = slurp(file);
  return {bytes.begin(), bytes.end()};
}

std::string run_cli(const std::string& args) {
  const CommandResult r = run_command(cli() + " " + args);
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  return r.out;
}

void expect_clean_failure(const CommandResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error thrown)";
}

void expect_contains(const std::string& message, std::initializer_list<std::string> parts) {
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "expected \"" << part << "\" in: " << message;
}

std::vector<float> dequantized(const Linear& layer) {
  std::vector<float> w(layer.n_out() * layer.n_in());
  layer.dequantize(w.data());
  return w;
}

}  // namespace subbit::testing
