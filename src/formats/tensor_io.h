#pragma once
// Conversions between in-memory layer data and GGUF tensors, shared by every format's
// save/load so they validate shapes the same way.
#include <cstdint>
#include <string>
#include <vector>

#include "io/gguf.h"

namespace subbit {

// fp16 vector (values must already be fp16-representable to round-trip exactly).
void put_f16(GgufWriter& out, const std::string& name, const std::vector<float>& values);
std::vector<float> get_f16(const GgufFile& file, const std::string& name, int64_t expected_count);

// Packed bit/byte words as an I8 tensor of shape (rows, bytes_per_row).
void put_words(GgufWriter& out, const std::string& name, const std::vector<uint64_t>& words,
               int64_t rows);
std::vector<uint64_t> get_words(const GgufFile& file, const std::string& name, int64_t rows,
                                int64_t words_per_row);

// Raw bytes of a tensor whose type and shape must match exactly.
const GgufTensor& expect_tensor(const GgufFile& file, const std::string& name, GgmlType type,
                                const std::vector<int64_t>& shape);

}  // namespace subbit
