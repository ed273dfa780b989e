#pragma once
// Per-thread working memory of the kernels (partial sums, lookup tables, hash entries, decoded
// rows): kept from call to call, so that a product allocates only the first time it runs at a
// larger size on a thread. The caller-owned Scratch of formats/linear.h cannot hold these: the
// kernels take them inside their own parallel regions, one per thread. Each use has its own
// slot, so buffers in use at the same time never share one.
#include <cstddef>
#include <type_traits>

namespace subbit {

enum class ThreadScratchSlot : int {
  SignPartialSums,    // sign_matmul: the column parts' partial sums
  SignTables,         // sign_matmul: lookup tables of activation sums
  SignScaledInputs,   // sign_matmul: activations times the column scale, a block at a time
  SketchEntries,      // sketch_matmul: hash entries of the rows being multiplied
  SketchBlockTerms,   // sketch_matmul: per-block hash terms
  SketchDecodedRows,  // sketch_matmul: rows decoded once for several tokens, or the row path's row
  SketchZeros,        // sketch_matmul: a zero token row for tiles past the last token
  SketchActivations,  // sketch_matmul: activations in the blocked layout
  SketchBf16Activations,  // sketch_matmul: one token's activations as BF16, in product order
  kCount
};

// At least `bytes` bytes, 64-byte aligned, contents undefined; this thread's, valid until its next
// call with the same slot. Fails (subbit::Error) when memory runs out.
void* thread_scratch_bytes(ThreadScratchSlot slot, size_t bytes);

template <class T>
T* thread_scratch(ThreadScratchSlot slot, size_t count) {
  static_assert(std::is_trivial_v<T>);
  return static_cast<T*>(thread_scratch_bytes(slot, count * sizeof(T)));
}

}  // namespace subbit
