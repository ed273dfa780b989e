#include "compress/rtn.h"

#include "formats/rtn.h"

namespace subbit::compress {

namespace {

torch::Tensor grid_tensor(const std::vector<float>& values, int64_t n_out) {
  return torch::tensor(values, torch::kFloat32).view({n_out, -1});
}

std::vector<float> grid_values(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace

RtnTrainable::RtnTrainable(const torch::Tensor& w, int bits)
    : RtnTrainable(w, std::vector<uint8_t>(w.size(0), uint8_t(bits))) {}

RtnTrainable::RtnTrainable(const torch::Tensor& w, std::vector<uint8_t> row_bits)
    : row_bits_(std::move(row_bits)) {
  const torch::Tensor original = w.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t n_out = original.size(0);
  std::vector<float> scales, minimums, levels(n_out);
  RtnLinear::encoder_grid(original.data_ptr<float>(), n_out, original.size(1), row_bits_, scales,
                          minimums);
  for (int64_t r = 0; r < n_out; ++r) levels[r] = float((int64_t{1} << row_bits_[r]) - 1);
  minimums_ = register_buffer("minimums", grid_tensor(minimums, n_out));
  scales_ = register_buffer("scales", grid_tensor(scales, n_out));
  levels_ = register_buffer("levels", grid_tensor(levels, n_out));
  latent_ = register_parameter("latent", original.clone());
}

torch::Tensor RtnTrainable::quantized(const torch::Tensor& w, const torch::Tensor& minimums,
                                      const torch::Tensor& scales,
                                      const torch::Tensor& levels) const {
  const int64_t n_out = w.size(0), n_in = w.size(1), groups = minimums.size(1);
  const int64_t padded_in = groups * RtnLinear::kGroup;
  torch::Tensor rounded;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor grouped = w.detach();
    if (padded_in > n_in)  // a partial last group: the padding is rounded, then dropped
      grouped = torch::constant_pad_nd(grouped, {0, padded_in - n_in});
    grouped = grouped.reshape({n_out, groups, RtnLinear::kGroup});
    const torch::Tensor minimum = minimums.unsqueeze(2), scale = scales.unsqueeze(2);
    // floor(v + 0.5): the encoder's lround for the levels that survive the clamp, ties included,
    // so an untrained module deploys exactly RtnLinear::encode's codes.
    const torch::Tensor codes =
        torch::minimum(((grouped - minimum) / scale + 0.5).floor().clamp_min(0),
                       levels.unsqueeze(2));
    rounded = (minimum + codes * scale).reshape({n_out, padded_in}).narrow(1, 0, n_in);
  }
  return w + (rounded - w).detach();
}

torch::Tensor RtnTrainable::forward(const torch::Tensor& x) {
  return torch::matmul(x, weight().t());
}

std::unique_ptr<Linear> RtnTrainable::to_runtime() const {
  const torch::Tensor w = latent_.detach().to(torch::kCPU).contiguous();
  return RtnLinear::encode_on_grid(w.data_ptr<float>(), w.size(0), w.size(1), row_bits_,
                                   grid_values(scales_), grid_values(minimums_));
}

}  // namespace subbit::compress
