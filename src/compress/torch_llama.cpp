#include "compress/torch_llama.h"

#include <fmt/format.h>

#include <cmath>

namespace subbit::compress {

namespace {

torch::Tensor from_floats(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {int64_t(v.size())}, torch::kFloat32).clone();
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

}  // namespace

torch::Tensor dense_weight(const Linear& linear) {
  torch::Tensor w = torch::empty({linear.n_out(), linear.n_in()}, torch::kFloat32);
  linear.dequantize(w.data_ptr<float>());
  return w;
}

FrozenDense::FrozenDense(torch::Tensor weight) : weight_(register_buffer("weight", std::move(weight))) {}

torch::Tensor FrozenDense::forward(const torch::Tensor& x) { return torch::matmul(x, weight_.t()); }

std::unique_ptr<Linear> FrozenDense::to_runtime() const {
  const torch::Tensor w = weight_.contiguous();
  std::vector<uint8_t> bytes(w.numel() * sizeof(float));
  std::memcpy(bytes.data(), w.data_ptr<float>(), bytes.size());
  return std::make_unique<DenseLinear>(DenseMatrix{DType::F32, nullptr, w.size(0), w.size(1)},
                                       std::move(bytes));
}

TorchLlama::TorchLlama(const LlamaModel& model) : config_(model.config()) {
  const LlamaWeights& w = model.weights();
  const LlamaConfig& c = config_;
  embedding_ = torch::empty({c.vocab_size, c.hidden_size}, torch::kFloat32);
  for (int64_t r = 0; r < c.vocab_size; ++r)
    dense_row_to_f32(w.embedding, r, embedding_.data_ptr<float>() + r * c.hidden_size);
  register_buffer("embedding", embedding_);
  lm_head_ = c.tie_word_embeddings ? embedding_ : register_buffer("lm_head", dense_weight(*w.lm_head));
  final_norm_ = register_parameter("final_norm", from_floats(w.final_norm));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = w.layers[l];
    attn_norms_.push_back(register_parameter(fmt::format("attn_norm_{}", l), from_floats(layer.attn_norm)));
    mlp_norms_.push_back(register_parameter(fmt::format("mlp_norm_{}", l), from_floats(layer.mlp_norm)));
    std::vector<std::shared_ptr<TrainableLinear>> row;
    const auto sources = layer.linears();
    for (int i = 0; i < kLinearsPerLayer; ++i)
      row.push_back(register_module(fmt::format("linear_{}_{}", l, i),
                                    std::make_shared<FrozenDense>(dense_weight(*sources[i]))));
    linears_.push_back(std::move(row));
  }
  // Same fp32 recipe as transformers (and src/ops/vector_ops.cpp).
  const int64_t half = c.head_dim / 2;
  torch::Tensor inv_freq = torch::empty({half}, torch::kFloat32);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = float(1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim)));
  torch::Tensor positions = torch::arange(c.max_position_embeddings, torch::kFloat32);
  torch::Tensor angles = torch::outer(positions, inv_freq);
  rope_cos_ = register_buffer("rope_cos", torch::cat({angles.cos(), angles.cos()}, -1));
  rope_sin_ = register_buffer("rope_sin", torch::cat({angles.sin(), angles.sin()}, -1));
}

std::shared_ptr<TrainableLinear> TorchLlama::linear(int64_t layer, int index) const {
  return linears_.at(layer).at(index);
}

void TorchLlama::set_linear(int64_t layer, int index, std::shared_ptr<TrainableLinear> module) {
  linears_.at(layer).at(index) = replace_module(fmt::format("linear_{}_{}", layer, index), std::move(module));
}

TorchOutput TorchLlama::forward(const torch::Tensor& tokens) {
  const LlamaConfig& c = config_;
  const int64_t batch = tokens.size(0), seq = tokens.size(1);
  const int64_t group = c.num_heads / c.num_kv_heads;
  const double eps = c.rms_norm_eps;
  torch::Tensor x = embedding_.index_select(0, tokens.reshape({-1})).reshape({batch, seq, c.hidden_size});
  const torch::Tensor cos = rope_cos_.slice(0, 0, seq), sin = rope_sin_.slice(0, 0, seq);  // (seq, head_dim)
  const torch::Tensor causal = torch::ones({seq, seq}, torch::dtype(torch::kBool).device(tokens.device())).triu(1);
  TorchOutput out;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& lin = linears_[l];
    torch::Tensor h = rms_norm(x, attn_norms_[l], eps);
    // (batch, heads, seq, head_dim)
    torch::Tensor q = lin[0]->forward(h).view({batch, seq, c.num_heads, c.head_dim}).transpose(1, 2);
    torch::Tensor k = lin[1]->forward(h).view({batch, seq, c.num_kv_heads, c.head_dim}).transpose(1, 2);
    torch::Tensor v = lin[2]->forward(h).view({batch, seq, c.num_kv_heads, c.head_dim}).transpose(1, 2);
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
    x = x + lin[3]->forward(attn);
    h = rms_norm(x, mlp_norms_[l], eps);
    x = x + lin[6]->forward(torch::silu(lin[4]->forward(h)) * lin[5]->forward(h));
    out.hidden.push_back(x);
  }
  out.logits = torch::matmul(rms_norm(x, final_norm_, eps), lm_head_.t());
  return out;
}

LlamaWeights TorchLlama::to_runtime(const LlamaModel& original) const {
  const LlamaWeights& src = original.weights();
  LlamaWeights w;
  w.embedding = src.embedding;
  w.storage = src.storage;  // the embedding (and a tied head) still live in the original's storage
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    LlamaLayer layer;
    layer.attn_norm = to_vector(attn_norms_[l]);
    layer.mlp_norm = to_vector(mlp_norms_[l]);
    const auto slots = layer.linear_slots();
    for (int i = 0; i < kLinearsPerLayer; ++i) *slots[i] = linears_[l][i]->to_runtime();
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = to_vector(final_norm_);
  w.lm_head = config_.tie_word_embeddings ? std::make_unique<DenseLinear>(w.embedding)
                                          : std::make_unique<DenseLinear>(dynamic_cast<const DenseLinear&>(*src.lm_head).matrix());
  return w;
}

}  // namespace subbit::compress
