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

LatentFactors dual_svid(const torch::Tensor& w, int64_t rank,
                        const TruncatedSvdOptions& svd_options) {
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
  return f.h.unsqueeze(1) * torch::matmul(hard_sign(f.u) * f.l, hard_sign(f.v).t()) *
         f.g.unsqueeze(0);
}

torch::Tensor surrogate_sign(const torch::Tensor& x, SignSurrogate surrogate, double alpha) {
  if (surrogate == SignSurrogate::Frozen) return hard_sign(x.detach());
  const torch::Tensor smooth =
      surrogate == SignSurrogate::Tanh ? torch::tanh(alpha * x) : x.clamp(-1.0, 1.0);
  // Forward value is the hard sign; the gradient is the smooth function's.
  return smooth + (hard_sign(x) - smooth).detach();
}

namespace {

// a · sign(latent) (or a · sign(latent)ᵀ), with surrogate_sign's gradient for the latent, as
// one autograd node that keeps only its inputs: the ±1 matrix (as large as the latent, in fp32)
// is rebuilt in the backward pass instead of being held from forward to backward for every
// layer. That held copy, and the surrogate's, were twice the student's latents: most of QAT's
// memory at the 1B shape (docs/distributed.md).
struct SignProduct : public torch::autograd::Function<SignProduct> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                               const torch::Tensor& latent, bool transpose, int64_t surrogate,
                               double alpha) {
    ctx->save_for_backward({a, latent});
    ctx->saved_data["transpose"] = transpose;
    ctx->saved_data["surrogate"] = surrogate;
    ctx->saved_data["alpha"] = alpha;
    const torch::Tensor s = hard_sign(latent);
    return torch::matmul(a, transpose ? s.t() : s);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &a = saved[0], &latent = saved[1];
    const bool transpose = ctx->saved_data["transpose"].toBool();
    const auto surrogate = SignSurrogate(ctx->saved_data["surrogate"].toInt());
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const torch::Tensor& grad = grads[0];  // (..., n)
    const torch::Tensor s = hard_sign(latent);
    torch::Tensor grad_a, grad_latent;
    if (ctx->needs_input_grad(0)) grad_a = torch::matmul(grad, transpose ? s : s.t());
    if (ctx->needs_input_grad(1) && surrogate != SignSurrogate::Frozen) {
      // The gradient of the ±1 matrix the product used, then through the surrogate.
      const torch::Tensor a2 = a.reshape({-1, a.size(-1)}), g2 = grad.reshape({-1, grad.size(-1)});
      torch::Tensor grad_s = transpose ? g2.t().mm(a2) : a2.t().mm(g2);  // latent's shape
      if (surrogate == SignSurrogate::Tanh) {
        const torch::Tensor t = torch::tanh(alpha * latent);
        grad_latent = grad_s * (1 - t * t) * alpha;
      } else {
        grad_latent = grad_s * (latent >= -1.0).logical_and(latent <= 1.0);
      }
    }
    return {grad_a, grad_latent, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// a (..., k) · sign(latent), latent (k, n); transpose: latent (n, k), a · sign(latent)ᵀ.
torch::Tensor sign_product(const torch::Tensor& a, const torch::Tensor& latent, bool transpose,
                           SignSurrogate surrogate, double alpha) {
  return SignProduct::apply(a, latent, transpose, int64_t(surrogate), alpha);
}

}  // namespace

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
    const torch::Tensor z =
        sign_product(x * f.g, f.v, /*transpose=*/false, surrogate_, alpha_) * f.l;  // (..., r)
    const torch::Tensor out =
        sign_product(z, f.u, /*transpose=*/true, surrogate_, alpha_) * f.h;  // (..., d_out)
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
    const torch::Tensor out =
        torch::matmul(left, surrogate_sign(f.v, surrogate_, alpha_).t()) * f.g;
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
