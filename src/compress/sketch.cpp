#include "compress/sketch.h"

#include <fmt/format.h>

namespace subbit::compress {

namespace {

torch::Tensor from_floats(const std::vector<float>& values, int64_t rows, int64_t cols) {
  return torch::from_blob(const_cast<float*>(values.data()), {rows, cols}, torch::kFloat32).clone();
}

// The table's codes by the runtime's quantizer (formats/sketch.h: sketch_code), computed on a
// host copy: tables are small next to the layer they stand for.
std::vector<int16_t> codes_of(const torch::Tensor& table, int value_bits, float step) {
  const torch::Tensor v = table.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  const float* data = v.data_ptr<float>();
  std::vector<int16_t> codes(v.numel());
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = sketch_code(data[i], value_bits, step);
  return codes;
}

}  // namespace

SketchTrainable::SketchTrainable(const SketchLinear& layer)
    : rule_(layer.rule()),
      block_(layer.block()),
      value_bits_(layer.value_bits()),
      hash_version_(layer.hash_version()),
      band_rows_(layer.band_rows()),
      d_out_(layer.n_out()),
      d_in_(layer.n_in()),
      blocks_per_row_(layer.blocks_per_row()),
      salient_mask_(layer.salient_mask()) {
  const SketchMatrix& m = layer.matrix();
  for (int s = 0; s < layer.sets(); ++s) {
    SketchTableSet set = layer.table_set(s);
    for (int k = 0; k < m.rows; ++k)
      tables_.push_back(register_parameter(fmt::format("{}table{}", s == 0 ? "" : "salient_", k),
                                           from_floats(set.values(k), set.buckets[k], block_)));
    set.codes.clear();
    sets_.push_back(std::move(set));
  }
  // Hashes are fixed, so every block's bucket (in the main-then-salient table of its row) and
  // sign are computed once.
  const int64_t blocks = d_out_ * blocks_per_row_;
  for (int k = 0; k < m.rows; ++k) {
    std::vector<int64_t> index(blocks);
    std::vector<float> sign(blocks);
    for (int64_t r = 0; r < d_out_; ++r)
      for (int64_t b = 0; b < blocks_per_row_; ++b) {
        bool negative = false;
        index[r * blocks_per_row_ + b] = int64_t(m.bucket_index(k, r, b, &negative));
        sign[r * blocks_per_row_ + b] = negative ? -1.0f : 1.0f;
      }
    bucket_indices_.push_back(
        register_buffer(fmt::format("bucket_index{}", k),
                        torch::from_blob(index.data(), {blocks}, torch::kInt64).clone()));
    signs_.push_back(
        register_buffer(fmt::format("sign{}", k),
                        torch::from_blob(sign.data(), {blocks, 1}, torch::kFloat32).clone()));
  }
}

torch::Tensor SketchTrainable::quantized_table(int k) const {
  const int rows = int(sets_[0].buckets.size());
  std::vector<torch::Tensor> parts;
  for (size_t s = 0; s < sets_.size(); ++s) {
    const torch::Tensor& v = tables_[s * rows + k];
    const float step = value_bits_ == 16 ? 0.0f : sets_[s].scales[k];
    std::vector<float> q;  // (buckets, block)
    for (const int16_t code : codes_of(v, value_bits_, step))
      q.push_back(sketch_code_value(code, value_bits_, step));
    // Forward value exactly the quantized table (q + 0), gradient the identity.
    parts.push_back(from_floats(q, v.size(0), v.size(1)).to(v.options()) + (v - v.detach()));
  }
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

torch::Tensor SketchTrainable::weight() const {
  const int rows = int(sets_[0].buckets.size());
  torch::Tensor w;  // (d_out · blocks, block)
  for (int k = 0; k < rows; ++k) {
    const torch::Tensor e = quantized_table(k).index_select(0, bucket_indices_[k]) * signs_[k];
    if (k == 0)
      w = e;
    else if (rule_ == SketchRule::Mean)
      w = w + e;
    // Strict comparisons: on a tie the lower row wins, as in the runtime kernels.
    else if (rule_ == SketchRule::AbsMinMax)
      w = torch::where(e.abs() > w.abs(), e, w);
    else
      w = torch::where(e.abs() < w.abs(), e, w);
  }
  if (rule_ == SketchRule::Mean) w = w / double(rows);
  return w.reshape({d_out_, blocks_per_row_ * block_}).slice(1, 0, d_in_);
}

torch::Tensor SketchTrainable::forward(const torch::Tensor& x) {
  return torch::matmul(x, weight().t());
}

std::unique_ptr<Linear> SketchTrainable::to_runtime() const {
  torch::NoGradGuard no_grad;
  const int rows = int(sets_[0].buckets.size());
  std::vector<SketchTableSet> sets = sets_;
  for (size_t s = 0; s < sets.size(); ++s)
    for (int k = 0; k < rows; ++k)
      sets[s].codes.push_back(codes_of(tables_[s * rows + k], value_bits_,
                                       value_bits_ == 16 ? 0.0f : sets_[s].scales[k]));
  return std::make_unique<SketchLinear>(d_out_, d_in_, rule_, block_, band_rows_, hash_version_,
                                        sets, salient_mask_);
}

}  // namespace subbit::compress
