#pragma once
// libgomp reads its waiting policy once, before main, so both programs re-run themselves once with
// the policy they need, unless the user chose one (OMP_WAIT_POLICY or GOMP_SPINCOUNT).
//
// Its default, spinning ~300,000 rounds before sleeping, makes thread teams burn the cores other
// work needs: on a busy 2-core machine a training step ran ~10x slower and two-thread generation
// ~30x slower. Never spinning costs the other way: every kernel call then wakes its threads from
// sleep, and sb-30m generated 216 t/s with two threads against 360 with one. A short spin (3,000
// rounds, well under a millisecond) keeps the team awake between the kernels of one token:
// 618-650 t/s with two threads on an idle machine; with another process holding one core it gave
// 188 t/s against passive waiting's 271 (docs/roofline.md, "Threads").
#include <unistd.h>

#include <cstdlib>

namespace subbit::cli {

enum class OmpWait {
  kPassive,    // subbit-compress: libtorch's long parallel regions gain nothing from spinning
  kShortSpin,  // subbit: inference calls many short kernels in a row
};

inline void set_omp_wait(char** argv, OmpWait wait) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  if (wait == OmpWait::kShortSpin) ::setenv("GOMP_SPINCOUNT", "3000", 1);  // overrides PASSIVE's 0
  ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
}

}  // namespace subbit::cli
