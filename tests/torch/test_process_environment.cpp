// The settings subbit-compress re-runs itself with (src/cli/process_environment.h).
#include <gtest/gtest.h>

#include <string>

#include "test_support.h"

namespace subbit {
namespace {

// The kernels OpenBLAS announced last ("Core: NAME", printed at each load with
// OPENBLAS_VERBOSE=2), lower-cased; "" when the BLAS is not OpenBLAS.
std::string last_openblas_core(const std::string& env) {
  const testing::CommandResult r =
      testing::run_command("env -u OPENBLAS_CORETYPE OPENBLAS_VERBOSE=2 " + env + " " +
                           testing::cli() + " compress --help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string all = r.out + r.err;
  const size_t at = all.rfind("Core: ");
  if (at == std::string::npos) return "";
  std::string core = all.substr(at + 6, all.find('\n', at) - at - 6);
  for (char& ch : core) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return core;
}

// Debian's OpenBLAS 0.3.21 falls back to its SSE3 "Prescott" kernels on CPU models it does not
// know (3.4x slower Dual-SVID here); the compressor must not run on them where AVX2 is present.
TEST(ProcessEnvironment, CompressorRunsOpenBlasOnTheKernelsTheCpuAllows) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    GTEST_SKIP() << "this CPU has no AVX2/FMA: the SSE3 kernels are the right ones";
  const std::string core = last_openblas_core("");
  if (core.empty()) GTEST_SKIP() << "libtorch's BLAS here is not OpenBLAS";
  EXPECT_NE(core, "prescott");
}

TEST(ProcessEnvironment, AUsersOpenBlasCoreTypeIsKept) {
  const std::string core = last_openblas_core("OPENBLAS_CORETYPE=Prescott");
  if (core.empty()) GTEST_SKIP() << "libtorch's BLAS here is not OpenBLAS";
  EXPECT_EQ(core, "prescott");
}

}  // namespace
}  // namespace subbit
