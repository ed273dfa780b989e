#include <cstring>

#include "formats/linear.h"

namespace subbit {

DenseLinear::DenseLinear(DenseMatrix matrix, std::vector<uint8_t> owned)
    : matrix_(matrix), owned_(std::move(owned)) {
  if (!owned_.empty()) matrix_.data = owned_.data();
}

std::unique_ptr<DenseLinear> DenseLinear::from_stored(DType dtype, const void* data, int64_t n_out,
                                                      int64_t n_in) {
  if (dtype != DType::F16)
    return std::make_unique<DenseLinear>(DenseMatrix{dtype, data, n_out, n_in});
  std::vector<uint8_t> owned(n_out * n_in * sizeof(float));
  float* out = reinterpret_cast<float*>(owned.data());
  const uint16_t* in = static_cast<const uint16_t*>(data);
  for (int64_t i = 0; i < n_out * n_in; ++i) out[i] = f16_to_f32(in[i]);
  return std::make_unique<DenseLinear>(DenseMatrix{DType::F32, nullptr, n_out, n_in},
                                       std::move(owned));
}

void DenseLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  dense_matmul(matrix_, x, y, tokens);
}

}  // namespace subbit

#include "common/error.h"
#include "formats/tensor_io.h"

namespace subbit {

std::unique_ptr<Linear> DenseLinear::load(const GgufFile& file, const std::string& prefix,
                                          int64_t n_out, int64_t n_in) {
  const GgufTensor& t = file.tensor(prefix + ".weight");
  if (!is_float_type(t.type) || t.shape != std::vector<int64_t>{n_out, n_in})
    fail("{}: tensor {}.weight must be F32/F16/BF16 [{}, {}]", file.path().string(), prefix, n_out,
         n_in);
  return from_stored(dtype_of(t.type), t.data, n_out, n_in);
}

void DenseLinear::save(GgufWriter& out, const std::string& prefix) const {
  const size_t bytes = size_t(matrix_.n_out * matrix_.n_in) * dtype_size(matrix_.dtype);
  const uint8_t* data = static_cast<const uint8_t*>(matrix_.data);
  out.add_tensor(prefix + ".weight", ggml_type_of(matrix_.dtype), {matrix_.n_out, matrix_.n_in},
                 std::vector<uint8_t>(data, data + bytes));
}

}  // namespace subbit
