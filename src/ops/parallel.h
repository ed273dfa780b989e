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

// Runs body(thread, threads) once on every thread of one team (the calling thread alone when
// already inside a parallel region), for work split into phases separated by team_barrier().
template <typename Body>
void parallel_team(Body&& body) {
  if (omp_in_parallel() || num_threads() == 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel
  body(omp_get_thread_num(), omp_get_num_threads());
}

// Waits until every thread of the team running parallel_team's body has reached it. Call it only
// when that body runs on more than one thread: on one, the caller may itself be inside another
// team, which it would wait for.
inline void team_barrier() {
#pragma omp barrier
}

// The share of [0, count) that thread `thread` of `threads` takes: contiguous, in whole multiples
// of `align` except the last end, which is `count`.
struct Share {
  int64_t begin, end;
};
inline Share share_of(int64_t count, int thread, int threads, int64_t align) {
  const int64_t units = (count + align - 1) / align;
  const int64_t begin = units * thread / threads * align,
                end = units * (thread + 1) / threads * align;
  return {begin < count ? begin : count, end < count ? end : count};
}

}  // namespace subbit
