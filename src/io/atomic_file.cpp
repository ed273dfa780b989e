#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>

#include "common/error.h"

namespace subbit {

AtomicFile::AtomicFile(const std::filesystem::path& target)
    : target_(target),
      temp_(target.parent_path() /
            (target.filename().string() + ".tmp." + std::to_string(::getpid()))) {
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", temp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  std::error_code ignored;
  if (!committed_) std::filesystem::remove(temp_, ignored);
}

void AtomicFile::write(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("{}: write failed: {}", temp_.string(), std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("{}: fsync failed: {}", temp_.string(), std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail("{}: close failed: {}", temp_.string(), std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(temp_, target_, ec);
  if (ec)
    fail("{}: cannot rename {} into place: {}", target_.string(), temp_.string(), ec.message());
  committed_ = true;
}

}  // namespace subbit
