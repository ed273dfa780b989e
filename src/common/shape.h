#pragma once
// Tensor shapes as the file readers and writers check and print them.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace subbit {

// The bytes of a tensor of `shape` with `element_bytes` per element; nullopt past 2^64 − 1.
inline std::optional<uint64_t> checked_nbytes(const std::vector<int64_t>& shape,
                                              uint64_t element_bytes) {
  uint64_t total = element_bytes;
  for (int64_t dim : shape)
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return std::nullopt;
  return total;
}

// "[d0, d1, ...]", for messages.
inline std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace subbit
