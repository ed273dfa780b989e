#pragma once
// Read-only memory map of a whole file (RAII). Weights are used in place from the map.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

namespace subbit {

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Hands the whole pages inside [data, data + size) back to the kernel, for memory not read again
// soon: a pass over a memory-mapped checkpoint then keeps only its current part resident. The
// contents stay (MADV_PAGEOUT re-reads file pages from the file and swaps anonymous ones), so it is
// safe on any memory; kernels without it (before Linux 5.4) ignore it.
void release_pages(const void* data, size_t size);

}  // namespace subbit
