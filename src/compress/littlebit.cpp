#include "compress/littlebit.h"

#include <fmt/format.h>

#include "formats/littlebit.h"
#include "ops/sign_matmul.h"

namespace subbit::compress {

namespace {

torch::Tensor hard_sign(const torch::Tensor& x) {
  return torch::where(x >= 0, torch::ones_like(x), -torch::ones_like(x));
}

// Top singular triple of a non-negative matrix: its singular vectors can be taken non-negative
// (Perron-Frobenius), so abs() only fixes SVD's arbitrary overall sign.
std::tuple<torch::Tensor, torch::Tensor> rank1_split(const torch::Tensor& m) {
  auto [u, s, vh] = torch::linalg::svd(m, false, c10::nullopt);
  const torch::Tensor root = s[0].sqrt();
  return {u.select(1, 0).abs() * root, vh.select(0, 0).abs() * root};
}

std::vector<float> to_f16_floats(const torch::Tensor& t) {
  // Scales are stored as fp16; round here so the runtime computes exactly what is stored.
  const torch::Tensor c = t.detach().to(torch::kFloat16).to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

std::vector<uint64_t> pack(const torch::Tensor& m) {
  const torch::Tensor c = m.detach().to(torch::kFloat32).contiguous();
  std::vector<uint64_t> words(c.size(0) * sign_words_per_row(c.size(1)));
  pack_signs(c.data_ptr<float>(), c.size(0), c.size(1), words.data());
  return words;
}

}  // namespace

LatentFactors dual_svid(const torch::Tensor& w, int64_t rank, const TruncatedSvdOptions& svd_options) {
  torch::NoGradGuard no_grad;
  const TruncatedSvd svd = truncated_svd(w.to(torch::kFloat32), rank, svd_options);
  const torch::Tensor root = svd.s.sqrt();
  LatentFactors f;
  f.u = svd.u * root;
  f.v = svd.vh.t() * root;
  auto [h, l_u] = rank1_split(f.u.abs());
  auto [g, l_v] = rank1_split(f.v.abs());
  f.h = h;
  f.g = g;
  f.l = l_u * l_v;
  return f;
}

torch::Tensor reconstruct(const LatentFactors& f, bool binarize) {
  if (!binarize) return torch::matmul(f.u, f.v.t());
  return f.h.unsqueeze(1) * torch::matmul(hard_sign(f.u) * f.l, hard_sign(f.v).t()) * f.g.unsqueeze(0);
}

torch::Tensor surrogate_sign(const torch::Tensor& x, SignSurrogate surrogate, double alpha) {
  if (surrogate == SignSurrogate::Frozen) return hard_sign(x.detach());
  const torch::Tensor smooth =
      surrogate == SignSurrogate::Tanh ? torch::tanh(alpha * x) : x.clamp(-1.0, 1.0);
  // Forward value is the hard sign; the gradient is the smooth function's.
  return smooth + (hard_sign(x) - smooth).detach();
}

LittleBitTrainable::LittleBitTrainable(const torch::Tensor& w, int64_t rank, bool residual,
                                       SignSurrogate surrogate, double alpha,
                                       const TruncatedSvdOptions& svd_options)
    : surrogate_(surrogate), alpha_(alpha), d_out_(w.size(0)), d_in_(w.size(1)) {
  torch::Tensor target = w;
  for (int p = 0; p < (residual ? 2 : 1); ++p) {
    LatentFactors f = dual_svid(target, rank, svd_options);
    target = target - reconstruct(f, /*binarize=*/true);
    const std::string prefix = fmt::format("path{}_", p);
    const bool signs_train = surrogate != SignSurrogate::Frozen;
    f.u = register_parameter(prefix + "u", f.u.contiguous(), signs_train);
    f.v = register_parameter(prefix + "v", f.v.contiguous(), signs_train);
    f.h = register_parameter(prefix + "h", f.h.contiguous());
    f.g = register_parameter(prefix + "g", f.g.contiguous());
    f.l = register_parameter(prefix + "l", f.l.contiguous());
    paths_.push_back(f);
  }
}

torch::Tensor LittleBitTrainable::forward(const torch::Tensor& x) {
  torch::Tensor y;
  for (const LatentFactors& f : paths_) {
    torch::Tensor z = torch::matmul(x * f.g, surrogate_sign(f.v, surrogate_, alpha_)) * f.l;
    torch::Tensor out = torch::matmul(z, surrogate_sign(f.u, surrogate_, alpha_).t()) * f.h;
    y = y.defined() ? y + out : out;
  }
  return y;
}

torch::Tensor LittleBitTrainable::rows(const torch::Tensor& index) {
  torch::Tensor w;
  for (const LatentFactors& f : paths_) {
    // (k, r) · (r, d_in): only the looked-up rows of sign(u) are multiplied out.
    const torch::Tensor left = surrogate_sign(f.u.index_select(0, index), surrogate_, alpha_) *
                               f.h.index_select(0, index).unsqueeze(1) * f.l;
    const torch::Tensor out = torch::matmul(left, surrogate_sign(f.v, surrogate_, alpha_).t()) * f.g;
    w = w.defined() ? w + out : out;
  }
  return w;
}

std::unique_ptr<Linear> LittleBitTrainable::to_runtime() const {
  std::vector<LittleBitPath> paths;
  for (const LatentFactors& f : paths_) {
    LittleBitPath p;
    p.rank = f.l.size(0);
    p.u_signs = pack(f.u);
    p.vt_signs = pack(f.v.t());
    p.h = to_f16_floats(f.h);
    p.g = to_f16_floats(f.g);
    p.l = to_f16_floats(f.l);
    paths.push_back(std::move(p));
  }
  return std::make_unique<LittleBitLinear>(d_out_, d_in_, std::move(paths));
}

}  // namespace subbit::compress
