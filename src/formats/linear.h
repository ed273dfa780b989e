#pragma once
// A linear layer in any weight format. The model only calls forward(); each compression format
// (dense, littlebit, sketch, rtn, ...) is one implementation, so adding a format never touches
// model code.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "ops/dense_matmul.h"

namespace subbit {

class GgufFile;
class GgufWriter;

// Working memory for Linear::forward, owned by the caller and reused from call to call (each
// RunState holds one), so that a forward pass stops allocating once it has run at its largest
// batch. A format uses up to kBuffers buffers in one product.
class Scratch {
 public:
  static constexpr int kBuffers = 4;
  // At least `count` floats, contents undefined, valid until the next call with this index.
  float* floats(int index, int64_t count) {
    std::vector<float>& b = buffers_.at(index);
    if (int64_t(b.size()) < count) b.resize(count);
    return b.data();
  }

 private:
  std::array<std::vector<float>, kBuffers> buffers_;
};

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t n_in() const = 0;
  virtual int64_t n_out() const = 0;
  // y (tokens, n_out) = x (tokens, n_in) · Wᵀ; temporaries come from `scratch`.
  virtual void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const = 0;
  // Row `row` of the dense matrix this layer computes with, (n_in): how an embedding table in
  // this format is looked up (one row per token, without decoding the rest).
  virtual void decode_row(int64_t row, float* out) const = 0;
  // The whole dense matrix, (n_out, n_in) row-major, for export and tests.
  virtual void dequantize(float* w) const {
    for (int64_t r = 0; r < n_out(); ++r) decode_row(r, w + r * n_in());
  }
  // The format's key in formats/format_table.cpp and in model files.
  virtual std::string format_name() const = 0;
  // Bits of everything this layer stores (signs, scales, tables, seeds, ...).
  virtual int64_t storage_bits() const = 0;
  // A one-line description for `subbit info` (rank, table size, ...).
  virtual std::string describe() const { return format_name(); }
  // Writes this layer's tensors as `prefix.*` (see docs/format.md); the format's loader in
  // formats/format_table.cpp reads them back.
  virtual void save(GgufWriter& out, const std::string& prefix) const = 0;
};

// Dense F32 or BF16 weights, either borrowed (memory-mapped file) or owned.
class DenseLinear final : public Linear {
 public:
  DenseLinear(DenseMatrix matrix, std::vector<uint8_t> owned = {});
  // Converts any stored dtype to the kernel's: F16 becomes F32 (owned), F32/BF16 are borrowed.
  static std::unique_ptr<DenseLinear> from_stored(DType dtype, const void* data, int64_t n_out,
                                                  int64_t n_in);
  // The "dense" row of formats/format_table.cpp: `prefix.weight`, F32/F16/BF16 (n_out, n_in).
  static std::unique_ptr<Linear> load(const GgufFile& file, const std::string& prefix,
                                      int64_t n_out, int64_t n_in);

  int64_t n_in() const override { return matrix_.n_in; }
  int64_t n_out() const override { return matrix_.n_out; }
  void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const override;
  void decode_row(int64_t row, float* out) const override { dense_row_to_f32(matrix_, row, out); }
  std::string format_name() const override { return "dense"; }
  std::string describe() const override { return std::string(dtype_name(matrix_.dtype)); }
  int64_t storage_bits() const override {
    return matrix_.n_in * matrix_.n_out * int64_t(dtype_size(matrix_.dtype)) * 8;
  }
  void save(GgufWriter& out, const std::string& prefix) const override;
  const DenseMatrix& matrix() const { return matrix_; }

 private:
  DenseMatrix matrix_;
  std::vector<uint8_t> owned_;
};

}  // namespace subbit
