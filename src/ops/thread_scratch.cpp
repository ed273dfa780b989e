#include "ops/thread_scratch.h"

#include <hwy/aligned_allocator.h>

#include <cstdint>

#include "common/error.h"

namespace subbit {

void* thread_scratch_bytes(ThreadScratchSlot slot, size_t bytes) {
  constexpr int kSlots = int(ThreadScratchSlot::kCount);
  thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> buffers[kSlots];
  thread_local size_t sizes[kSlots] = {};
  const int i = int(slot);
  if (sizes[i] < bytes) {
    buffers[i] = hwy::AllocateAligned<uint8_t>(bytes);
    sizes[i] = buffers[i] ? bytes : 0;
    if (!buffers[i]) fail("kernel scratch: out of memory for {} bytes", bytes);
  }
  return buffers[i].get();
}

}  // namespace subbit
