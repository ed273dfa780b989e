#pragma once
// Thread-level parallelism for kernels. OpenMP keeps the kernels short; the thread count is
// process-wide and set once by the CLI (--threads).
#include <omp.h>

#include <cstdint>

namespace subbit {

inline void set_num_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}
inline int num_threads() { return omp_get_max_threads(); }

// Calls body(begin, end) on disjoint chunks of [0, count) of about `grain` items, in parallel.
template <typename Body>
void parallel_for(int64_t count, int64_t grain, Body&& body) {
  if (count <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t chunks = (count + grain - 1) / grain;
  if (chunks == 1 || omp_in_parallel()) {
    body(int64_t{0}, count);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * grain;
    const int64_t end = begin + grain < count ? begin + grain : count;
    body(begin, end);
  }
}

}  // namespace subbit
