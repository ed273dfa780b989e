#include "compress/torch_llama.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "common/error.h"
#include "io/mapped_file.h"

namespace subbit::compress {

namespace {

torch::Tensor from_floats(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {int64_t(v.size())}, torch::kFloat32)
      .clone();
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * weight;
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

std::vector<float> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// x (..., n_in) · weightᵀ with a frozen weight kept in any dtype: multiplied in x's (fp32), and
// saved for backward as kept, so a BF16 weight's fp32 copy lives only during each product.
struct FrozenProduct : public torch::autograd::Function<FrozenProduct> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight) {
    ctx->saved_data["weight"] = weight;
    return torch::matmul(x, weight.to(x.scalar_type()).t());
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const torch::Tensor weight = ctx->saved_data["weight"].toTensor();
    const torch::Tensor& grad = grads[0];  // (..., n_out)
    return {torch::matmul(grad, weight.to(grad.scalar_type())), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor dense_weight(const Linear& linear) {
  torch::Tensor w = torch::empty({linear.n_out(), linear.n_in()}, torch::kFloat32);
  linear.dequantize(w.data_ptr<float>());
  return w;
}

torch::Tensor frozen_weight(const Linear& linear) {
  const auto* dense = dynamic_cast<const DenseLinear*>(&linear);
  if (!dense || dense->matrix().dtype != DType::BF16) return dense_weight(linear);
  const DenseMatrix& m = dense->matrix();
  const size_t bytes = size_t(m.n_out * m.n_in) * dtype_size(m.dtype);
  torch::Tensor w = torch::empty({m.n_out, m.n_in}, torch::kBFloat16);
  std::memcpy(w.data_ptr(), m.data, bytes);
  release_pages(m.data, bytes);
  return w;
}

FrozenDense::FrozenDense(torch::Tensor weight)
    : weight_(register_buffer("weight", std::move(weight))) {}

torch::Tensor FrozenDense::forward(const torch::Tensor& x) {
  if (weight_.scalar_type() == x.scalar_type()) return torch::matmul(x, weight_.t());
  return FrozenProduct::apply(x, weight_);
}

std::unique_ptr<Linear> FrozenDense::to_runtime() const {
  const torch::Tensor w = weight_.to(torch::kCPU).contiguous();
  const DType dtype = w.scalar_type() == torch::kBFloat16 ? DType::BF16 : DType::F32;
  std::vector<uint8_t> bytes(w.numel() * w.element_size());
  std::memcpy(bytes.data(), w.data_ptr(), bytes.size());
  return std::make_unique<DenseLinear>(DenseMatrix{dtype, nullptr, w.size(0), w.size(1)},
                                       std::move(bytes));
}

TorchLlama::TorchLlama(const LlamaModel& model) : config_(model.config()) {
  const LlamaWeights& w = model.weights();
  const LlamaConfig& c = config_;
  embedding_ = register_buffer("embedding", frozen_weight(*w.embedding));
  head_ = register_module(
      "lm_head", std::make_shared<FrozenDense>(w.head_is_embedding() ? embedding_.alias()
                                                                     : frozen_weight(*w.lm_head)));
  final_norm_ = register_parameter("final_norm", from_floats(w.final_norm));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = w.layers[l];
    attn_norms_.push_back(
        register_parameter(fmt::format("attn_norm_{}", l), from_floats(layer.norm[kAttnNorm])));
    mlp_norms_.push_back(
        register_parameter(fmt::format("mlp_norm_{}", l), from_floats(layer.norm[kMlpNorm])));
    std::vector<std::shared_ptr<TrainableLinear>> row;
    std::vector<torch::Tensor> biases;
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      row.push_back(
          register_module(fmt::format("linear_{}_{}", l, i),
                          std::make_shared<FrozenDense>(frozen_weight(*layer.linear[i]))));
      // Biases stay as stored: frozen, full precision (an undefined tensor: no bias).
      biases.push_back(layer.bias[i].empty() ? torch::Tensor()
                                             : register_buffer(fmt::format("bias_{}_{}", l, i),
                                                               from_floats(layer.bias[i])));
    }
    linears_.push_back(std::move(row));
    biases_.push_back(std::move(biases));
  }
  const std::vector<float> inv_freq = rope_inverse_frequencies(c);
  rope_inv_freq_ = register_buffer("rope_inv_freq", from_floats(inv_freq));
}

TorchLlama::TorchLlama(const TorchLlama& teacher, ShareFrozen) : config_(teacher.config_) {
  const auto frozen_tensor = [](const std::shared_ptr<TrainableLinear>& module) {
    const auto frozen = std::dynamic_pointer_cast<FrozenDense>(module);
    if (!frozen) fail("a student can share only a teacher's frozen layers");
    return frozen->stored().alias();
  };
  if (teacher.head_is_embedding_) fail("a student can share only a teacher whose head is frozen");
  embedding_ = register_buffer("embedding", teacher.embedding_.alias());
  const bool tied = frozen_tensor(teacher.head_).is_alias_of(teacher.embedding_);
  head_ = register_module("lm_head", std::make_shared<FrozenDense>(
                                         tied ? embedding_.alias() : frozen_tensor(teacher.head_)));
  final_norm_ = register_parameter("final_norm", teacher.final_norm_.detach().clone());
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    attn_norms_.push_back(register_parameter(fmt::format("attn_norm_{}", l),
                                             teacher.attn_norms_[l].detach().clone()));
    mlp_norms_.push_back(
        register_parameter(fmt::format("mlp_norm_{}", l), teacher.mlp_norms_[l].detach().clone()));
    std::vector<std::shared_ptr<TrainableLinear>> row;
    std::vector<torch::Tensor> biases;
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      row.push_back(
          register_module(fmt::format("linear_{}_{}", l, i),
                          std::make_shared<FrozenDense>(frozen_tensor(teacher.linears_[l][i]))));
      const torch::Tensor& bias = teacher.biases_[l][i];
      biases.push_back(bias.defined()
                           ? register_buffer(fmt::format("bias_{}_{}", l, i), bias.alias())
                           : torch::Tensor());
    }
    linears_.push_back(std::move(row));
    biases_.push_back(std::move(biases));
  }
  rope_inv_freq_ = register_buffer("rope_inv_freq", teacher.rope_inv_freq_.alias());
}

std::shared_ptr<TrainableLinear> TorchLlama::linear(int64_t layer, int index) const {
  return linears_.at(layer).at(index);
}

void TorchLlama::set_linear(int64_t layer, int index, std::shared_ptr<TrainableLinear> module) {
  linears_.at(layer).at(index) =
      replace_module(fmt::format("linear_{}_{}", layer, index), std::move(module));
}

void TorchLlama::set_head(std::shared_ptr<TrainableLinear> module, bool is_embedding) {
  head_ = replace_module("lm_head", std::move(module));
  head_is_embedding_ = is_embedding;
}

void TorchLlama::set_embedding(std::shared_ptr<const Linear> embedding) {
  // New data for the registered buffer, not a copy into the old: a tied head that is still
  // frozen keeps reading the old storage (through its alias). The dtype may change (BF16 kept
  // -> the encoded table's fp32 values).
  torch::NoGradGuard no_grad;
  embedding_.set_data(dense_weight(*embedding).to(embedding_.device()));
  embedding_runtime_ = std::move(embedding);
}

torch::Tensor TorchLlama::embed(const torch::Tensor& tokens) {
  const torch::Tensor ids = tokens.reshape({-1});
  return (head_is_embedding_ ? head_->rows(ids)
                             : embedding_.index_select(0, ids).to(torch::kFloat32))
      .reshape({tokens.size(0), tokens.size(1), config_.hidden_size});
}

torch::Tensor TorchLlama::block(int64_t l, torch::Tensor x) {
  const LlamaConfig& c = config_;
  const int64_t batch = x.size(0), seq = x.size(1);
  const int64_t group = c.num_heads / c.num_kv_heads;
  const double eps = c.rms_norm_eps;
  // Same fp32 recipe as transformers and src/ops/vector_ops.cpp: angle = position * inv_freq.
  const torch::Tensor positions = torch::arange(seq, rope_inv_freq_.options());
  const torch::Tensor angles = torch::outer(positions, rope_inv_freq_);    // (seq, head_dim/2)
  const torch::Tensor cos = torch::cat({angles.cos(), angles.cos()}, -1);  // (seq, head_dim)
  const torch::Tensor sin = torch::cat({angles.sin(), angles.sin()}, -1);
  const torch::Tensor causal =
      torch::ones({seq, seq}, torch::dtype(torch::kBool).device(x.device())).triu(1);
  auto project = [&](int index, const torch::Tensor& input) {
    torch::Tensor y = linears_[l][index]->forward(input);
    const torch::Tensor& bias = biases_[l][index];
    return bias.defined() ? y + bias : y;
  };
  torch::Tensor h = rms_norm(x, attn_norms_[l], eps);
  // (batch, heads, seq, head_dim)
  torch::Tensor q = project(kQ, h).view({batch, seq, c.num_heads, c.head_dim}).transpose(1, 2);
  torch::Tensor k = project(kK, h).view({batch, seq, c.num_kv_heads, c.head_dim}).transpose(1, 2);
  torch::Tensor v = project(kV, h).view({batch, seq, c.num_kv_heads, c.head_dim}).transpose(1, 2);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  if (group > 1) {
    k = k.repeat_interleave(group, 1);
    v = v.repeat_interleave(group, 1);
  }
  torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(c.head_dim));
  scores = scores.masked_fill(causal, -std::numeric_limits<float>::infinity());
  torch::Tensor attn = torch::matmul(torch::softmax(scores, -1), v);
  attn = attn.transpose(1, 2).reshape({batch, seq, c.num_heads * c.head_dim});
  x = x + project(kO, attn);
  h = rms_norm(x, mlp_norms_[l], eps);
  return x + project(kDown, torch::silu(project(kGate, h)) * project(kUp, h));
}

std::vector<torch::Tensor> TorchLlama::block_parameters(int64_t l) {
  std::vector<torch::Tensor> params = {attn_norms_.at(l), mlp_norms_.at(l)};
  for (const auto& linear : linears_.at(l))
    for (const torch::Tensor& p : linear->parameters()) params.push_back(p);
  return params;
}

TorchOutput TorchLlama::forward(const torch::Tensor& tokens) {
  torch::Tensor x = embed(tokens);  // (batch, seq, hidden)
  TorchOutput out;
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    x = block(l, x);
    out.hidden.push_back(x);
  }
  out.logits = head_->forward(rms_norm(x, final_norm_, config_.rms_norm_eps));
  return out;
}

LlamaWeights TorchLlama::to_runtime(const LlamaModel& original) const {
  const LlamaWeights& src = original.weights();
  LlamaWeights w;
  w.storage = src.storage;  // the original embedding may still live in the original's storage
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    LlamaLayer layer;
    layer.norm[kAttnNorm] = to_vector(attn_norms_[l]);
    layer.norm[kMlpNorm] = to_vector(mlp_norms_[l]);
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      layer.linear[i] = linears_[l][i]->to_runtime();
      layer.bias[i] = src.layers[l].bias[i];
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = to_vector(final_norm_);
  w.embedding = embedding_runtime_ ? embedding_runtime_ : src.embedding;
  // A head still frozen is the original's, as stored (not the fp32 copy FrozenDense holds).
  if (head_is_embedding_) {
    w.lm_head = head_->to_runtime();
    w.embedding = w.lm_head;
  } else if (std::dynamic_pointer_cast<FrozenDense>(head_)) {
    w.lm_head = src.lm_head;
  } else {
    w.lm_head = head_->to_runtime();
  }
  return w;
}

}  // namespace subbit::compress
