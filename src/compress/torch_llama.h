#pragma once
// The Llama forward pass in libtorch, for quantization-aware training: the same math as
// src/model/llama.cpp, differentiable, batched, returning every block's hidden state for the
// distillation loss. Linear layers are pluggable TrainableLinear modules.
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "formats/linear.h"
#include "model/llama.h"

namespace subbit::compress {

class TrainableLinear : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;  // (..., n_in) -> (..., n_out)
  // Rows `index` (k) of the weights forward() multiplies with, (k, n_in), differentiable: what
  // an embedding in this format looks up.
  virtual torch::Tensor rows(const torch::Tensor& index) = 0;
  // The inference-runtime layer this module deploys as.
  virtual std::unique_ptr<Linear> to_runtime() const = 0;
};

// The original weights, frozen (teacher, and layers left uncompressed). Kept in BF16 when that
// is how they are stored (exact, half of fp32's memory) and multiplied in fp32: the products are
// the same as with an fp32 copy.
class FrozenDense final : public TrainableLinear {
 public:
  explicit FrozenDense(torch::Tensor weight);  // (n_out, n_in) fp32 or bf16
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor rows(const torch::Tensor& index) override {
    return weight_.index_select(0, index).to(torch::kFloat32);
  }
  std::unique_ptr<Linear> to_runtime() const override;
  torch::Tensor weight() const { return weight_.to(torch::kFloat32); }  // (n_out, n_in) fp32
  const torch::Tensor& stored() const { return weight_; }               // as kept

 private:
  torch::Tensor weight_;
};

// (n_out, n_in) fp32 copy of a runtime layer's effective weights.
torch::Tensor dense_weight(const Linear& linear);
// A runtime layer's weights as a frozen copy: BF16 when the layer stores dense BF16 (its source
// pages are handed back once copied), fp32 otherwise.
torch::Tensor frozen_weight(const Linear& linear);

struct TorchOutput {
  torch::Tensor logits;               // (batch, seq, vocab)
  std::vector<torch::Tensor> hidden;  // per block: (batch, seq, hidden)
};

class TorchLlama : public torch::nn::Module {
 public:
  // Copies the runtime model's weights; every linear and the LM head start as FrozenDense. Norms
  // are trainable parameters; the embedding and biases frozen buffers.
  explicit TorchLlama(const LlamaModel& model);
  // A student that shares the teacher's frozen tensors (embedding, frozen head and linears,
  // biases) instead of copying them; only the norms, which train, are copied. Aliases, so that
  // replacing the student's embedding or layers never touches the teacher. (Moving the two to
  // another device moves the shared tensors twice.)
  struct ShareFrozen {};
  TorchLlama(const TorchLlama& teacher, ShareFrozen);

  TorchOutput forward(const torch::Tensor& tokens);  // (batch, seq) int64
  // The pieces forward() chains, for block-wise distillation: the embedding rows of tokens
  // (batch, seq) -> (batch, seq, hidden), and block l alone, (batch, seq, hidden) -> the same.
  torch::Tensor embed(const torch::Tensor& tokens);
  torch::Tensor block(int64_t layer, torch::Tensor x);
  // Block l's parameters: its two norms and its linears' parameters.
  std::vector<torch::Tensor> block_parameters(int64_t layer);

  const LlamaConfig& config() const { return config_; }
  std::shared_ptr<TrainableLinear> linear(int64_t layer, int index) const;
  void set_linear(int64_t layer, int index, std::shared_ptr<TrainableLinear> module);
  std::shared_ptr<TrainableLinear> head() const { return head_; }
  // The LM head; with `is_embedding` the embedding is looked up in the same module's rows (a tied
  // model whose embedding and head share one format, stored once), so that it trains as both.
  void set_head(std::shared_ptr<TrainableLinear> module, bool is_embedding);
  // A (vocab, hidden) embedding encoded once (post-training): the student looks its rows up,
  // frozen, and deploys it as it is.
  void set_embedding(std::shared_ptr<const Linear> embedding);

  // Builds runtime weights: trained linears and head via to_runtime(), trained norms, and the
  // embedding (the original's, the one given to set_embedding, or the head's).
  LlamaWeights to_runtime(const LlamaModel& original) const;

 private:
  LlamaConfig config_;
  torch::Tensor embedding_;  // (vocab, hidden), frozen; unused when head_is_embedding_
  std::shared_ptr<const Linear> embedding_runtime_;  // set_embedding's; null: the original's
  std::shared_ptr<TrainableLinear> head_;            // (vocab, hidden)
  bool head_is_embedding_ = false;
  torch::Tensor final_norm_;
  std::vector<torch::Tensor> attn_norms_, mlp_norms_;
  std::vector<std::vector<std::shared_ptr<TrainableLinear>>>
      linears_;  // (layers, kLinearsPerBlock)
  std::vector<std::vector<torch::Tensor>>
      biases_;                   // (layers, kLinearsPerBlock): (n_out) or undefined
  torch::Tensor rope_inv_freq_;  // (head_dim / 2), after RoPE scaling
};

}  // namespace subbit::compress
