#pragma once
// Atomic file output: bytes go to a temporary file beside the target, which commit() fsyncs and
// renames into place. Until then the target is untouched, and the temporary file is removed on
// every other exit path, so a failed or interrupted write never leaves a partial output.
#include <cstddef>
#include <filesystem>

namespace subbit {

class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& target);  // throws Error naming the file
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void commit();

 private:
  std::filesystem::path target_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace subbit
