#pragma once
// The Llama forward pass: embeddings, RMSNorm, RoPE (optionally scaled), grouped-query attention
// with a KV cache, optional q/k/v/o/MLP biases (Qwen2), SwiGLU MLP, tied or untied LM head.
// Linear layers may be in any weight format.
#include <any>
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "formats/linear.h"
#include "model/config.h"
#include "model/tensors.h"
#include "ops/vector_ops.h"

namespace subbit {

struct LlamaLayer {
  std::array<std::vector<float>, kNormsPerBlock> norm;           // each (hidden)
  std::array<std::unique_ptr<Linear>, kLinearsPerBlock> linear;  // in kBlockLinears order
  std::array<std::vector<float>, kLinearsPerBlock> bias;         // (n_out), empty: no bias
};

struct LlamaWeights {
  // (vocab, hidden) in any weight format: one row is decoded per token (Linear::decode_row).
  std::shared_ptr<const Linear> embedding;
  std::vector<LlamaLayer> layers;
  std::vector<float> final_norm;  // (hidden)
  // (vocab, hidden). A tied model whose head and embedding share one format holds one object
  // for both (stored once); a head in another format is a second copy.
  std::shared_ptr<const Linear> lm_head;
  std::vector<std::any> storage;  // keeps memory maps / owned buffers alive
  bool head_is_embedding() const { return lm_head == embedding; }
};

// Everything one sequence needs between and during forward calls, owned by the caller (one per
// sequence, like llama2.c's RunState): its keys and values, and activation, attention and
// weight-format buffers that grow to the largest batch of tokens seen, so that decoding
// allocates nothing.
class RunState {
 public:
  RunState(const LlamaConfig& config, int64_t capacity);
  // Bytes of keys and values (f32) for `capacity` positions, before allocating them.
  static int64_t bytes_for(const LlamaConfig& config, int64_t capacity);
  int64_t capacity() const { return capacity_; }
  float* keys(int64_t layer, int64_t position) { return at(k_, layer, position); }
  float* values(int64_t layer, int64_t position) { return at(v_, layer, position); }

 private:
  friend class LlamaModel;
  float* at(std::vector<float>& buffer, int64_t layer, int64_t position) {
    return buffer.data() + (layer * capacity_ + position) * row_;
  }
  void reserve_activations(const LlamaConfig& config, int64_t tokens);
  int64_t capacity_;
  int64_t row_;               // kv_heads * head_dim
  std::vector<float> k_, v_;  // (layers, capacity, kv_heads, head_dim)

  int64_t activation_tokens_ = 0;
  std::vector<float> x_;       // (tokens, hidden) residual stream
  std::vector<float> normed_;  // (tokens, hidden)
  std::vector<float> q_;       // (tokens, heads, head_dim)
  std::vector<float> k_new_;   // (tokens, kv_heads, head_dim)
  std::vector<float> v_new_;   // (tokens, kv_heads, head_dim)
  std::vector<float> attn_;    // (tokens, heads, head_dim)
  std::vector<float> gate_;    // (tokens, ffn)
  std::vector<float> up_;      // (tokens, ffn)
  std::vector<float> delta_;   // (tokens, hidden) block output
  std::vector<float> scores_;  // (attention chunks, rows per chunk, positions) softmax rows
  Scratch scratch_;            // temporaries of the linear layers' products
};

// Sees the input of every linear layer during a forward pass (calibration statistics,
// sensitivity analysis) without touching the weights.
class LinearInputObserver {
 public:
  virtual ~LinearInputObserver() = default;
  // x: (tokens, n_in), the input of block `layer`'s linear `index` (a LinearIndex).
  virtual void observe(int64_t layer, int index, const float* x, int64_t tokens, int64_t n_in) = 0;
};

class LlamaModel {
 public:
  LlamaModel(LlamaConfig config, LlamaWeights weights);

  // Runs `tokens` at positions start_pos.. (the cache holds everything before). Writes logits
  // (tokens, vocab) when all_logits, else only the last position's (1, vocab).
  void forward(std::span<const int32_t> tokens, int64_t start_pos, RunState& state, float* logits,
               bool all_logits, LinearInputObserver* observer = nullptr) const;

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }

 private:
  void attention(const float* q, int64_t tokens, int64_t start_pos, int64_t layer, RunState& state,
                 float* out) const;
  // y (tokens, n_out) = x · Wᵀ + b for block `layer`'s linear `index`.
  void project(const LlamaLayer& layer, int64_t layer_index, int index, const float* x, float* y,
               int64_t tokens, RunState& state, LinearInputObserver* observer) const;
  LlamaConfig config_;
  LlamaWeights weights_;
  Rope rope_;
};

}  // namespace subbit
