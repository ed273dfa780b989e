#pragma once
// Settings that libraries read once, when they are loaded (before main): each program re-runs
// itself once with the values it needs, and a value the user set is always kept.
//
// OpenMP waiting policy. libgomp's default, spinning ~300,000 rounds before sleeping, makes
// thread teams burn the cores other work needs: on a busy 2-core machine a training step ran ~10x
// slower and two-thread generation ~30x slower. Never spinning costs the other way: every kernel
// call then wakes its threads from sleep, and sb-30m generated 216 t/s with two threads against
// 360 with one. A short spin (3,000 rounds, well under a millisecond) keeps the team awake between
// the kernels of one token: 618-650 t/s with two threads on an idle machine; with another process
// holding one core it gave 188 t/s against passive waiting's 271 (docs/roofline.md, "Threads").
//
// OpenBLAS kernels (subbit-compress: libtorch's fp32 matrix products and LAPACK run on it). It
// picks kernels by CPU model, and Debian's 0.3.21 does not know newer models (this project's
// Xeons, family 6 model 207) and falls back to its SSE3 "Prescott" kernels: Dual-SVID of two
// Llama-2-7B blocks took 4 min 30 s there against 1 min 19 s with the AVX-512 kernels
// (docs/results.md, "Compressing and running the Llama-2-7B shape"). When OpenBLAS reports that
// fallback, the kernels the CPU's features allow are requested by OPENBLAS_CORETYPE.
#include <dlfcn.h>
#include <strings.h>
#include <unistd.h>

#include <cstdlib>

namespace subbit::cli {

enum class OmpWait {
  kPassive,    // subbit-compress: libtorch's long parallel regions gain nothing from spinning
  kShortSpin,  // subbit: inference calls many short kernels in a row
};

// The OPENBLAS_CORETYPE to request, or nullptr when OpenBLAS is absent, chose well or was told.
inline const char* openblas_core_to_request() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  using CoreName = char* (*)();
  const auto core_name = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (core_name == nullptr || ::strcasecmp(core_name(), "prescott") != 0) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

inline void set_process_environment(char** argv, OmpWait wait) {
  bool changed = false;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    if (wait == OmpWait::kShortSpin)
      ::setenv("GOMP_SPINCOUNT", "3000", 1);  // overrides PASSIVE's 0
    changed = true;
  }
  if (const char* core = openblas_core_to_request()) {
    ::setenv("OPENBLAS_CORETYPE", core, 1);
    changed = true;
  }
  if (changed) ::execv("/proc/self/exe", argv);  // on failure, carry on with the defaults
}

}  // namespace subbit::cli
