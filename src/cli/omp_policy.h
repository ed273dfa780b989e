#pragma once
// libgomp reads OMP_WAIT_POLICY once, before main. Its default spin-waiting makes thread teams
// burn the cores other work needs: on a busy 2-core machine a training step ran ~10x slower and
// two-thread generation ~30x slower. Both programs therefore re-run themselves once with
// passive waiting, unless the user chose a policy.
#include <unistd.h>

#include <cstdlib>

namespace subbit::cli {

inline void use_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
}

}  // namespace subbit::cli
