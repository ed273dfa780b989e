#include "formats/tensor_io.h"

#include <fmt/format.h>

#include <cstring>

#include "common/dtype.h"
#include "common/error.h"

namespace subbit {

const GgufTensor& expect_tensor(const GgufFile& file, const std::string& name, GgmlType type,
                                const std::vector<int64_t>& shape) {
  const GgufTensor& t = file.tensor(name);
  if (t.type != type || t.shape != shape)
    fail("{}: tensor {} is {} [{}], expected {} [{}]", file.path().string(), name,
         ggml_type_name(t.type), fmt::join(t.shape, ","), ggml_type_name(type),
         fmt::join(shape, ","));
  return t;
}

void put_f16(GgufWriter& out, const std::string& name, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = f32_to_f16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &h, 2);
  }
  out.add_tensor(name, GgmlType::F16, {int64_t(values.size())}, std::move(bytes));
}

std::vector<float> get_f16(const GgufFile& file, const std::string& name, int64_t expected_count) {
  const GgufTensor& t = expect_tensor(file, name, GgmlType::F16, {expected_count});
  std::vector<float> values(expected_count);
  for (int64_t i = 0; i < expected_count; ++i) {
    uint16_t h;
    std::memcpy(&h, t.data + 2 * i, 2);
    values[i] = f16_to_f32(h);
  }
  return values;
}

void put_words(GgufWriter& out, const std::string& name, const std::vector<uint64_t>& words,
               int64_t rows) {
  std::vector<uint8_t> bytes(words.size() * 8);
  std::memcpy(bytes.data(), words.data(), bytes.size());  // little-endian: LSB-first bytes
  const int64_t bytes_per_row = int64_t(bytes.size()) / std::max<int64_t>(rows, 1);
  out.add_tensor(name, GgmlType::I8, {rows, bytes_per_row}, std::move(bytes));
}

std::vector<uint64_t> get_words(const GgufFile& file, const std::string& name, int64_t rows,
                                int64_t words_per_row) {
  const GgufTensor& t = expect_tensor(file, name, GgmlType::I8, {rows, words_per_row * 8});
  std::vector<uint64_t> words(rows * words_per_row);
  std::memcpy(words.data(), t.data, words.size() * 8);
  return words;
}

}  // namespace subbit
