#pragma once
// UltraSketch in the training graph (docs/ultrasketch.md): the hash tables of an encoded
// SketchLinear become parameters; the hashes, signs and salient mask stay fixed.
//
// Forward: each hash row's table is quantized by the runtime's own quantizer (sketch_code, on a
// host copy; straight-through estimator: the forward value is the quantized table, the gradient
// passes unchanged), every block gathers its bucket vector from each row and applies its sign,
// the layer's rule combines the rows (which row wins is recomputed every forward and is not
// differentiated), and y = x · Wᵀ. The gather's backward is a scatter-add, so each reconstructed
// weight's gradient flows to the bucket it was read from.
// Quantization steps (the fp16 scales) are kept from the encoder.
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "compress/torch_llama.h"
#include "formats/sketch.h"

namespace subbit::compress {

class SketchTrainable final : public TrainableLinear {
 public:
  // Starts from the layer's tables, so forward() first computes what layer.forward() does.
  explicit SketchTrainable(const SketchLinear& layer);

  torch::Tensor forward(const torch::Tensor& x) override;  // (..., d_in) -> (..., d_out)
  torch::Tensor rows(const torch::Tensor& index) override {
    return weight().index_select(0, index);
  }
  // The SketchLinear with the current tables, quantized exactly as forward() uses them.
  std::unique_ptr<Linear> to_runtime() const override;
  // (d_out, d_in): the weights forward() multiplies with.
  torch::Tensor weight() const;

 private:
  // Row k's table as forward() reads it: (buckets + salient buckets, block), quantized with STE.
  torch::Tensor quantized_table(int k) const;

  SketchRule rule_;
  int block_, value_bits_, hash_version_;
  int64_t band_rows_, d_out_, d_in_, blocks_per_row_;
  std::vector<SketchTableSet> sets_;  // buckets, seeds and scales; the values are the parameters
  std::vector<uint64_t> salient_mask_;
  std::vector<torch::Tensor> tables_;  // [set · rows + k]: (buckets, block) parameters
  std::vector<torch::Tensor>
      bucket_indices_;                // [k]: (d_out · blocks) int64 into quantized_table(k)
  std::vector<torch::Tensor> signs_;  // [k]: (d_out · blocks, 1) ±1
};

}  // namespace subbit::compress
