#pragma once
// The Llama forward pass: embeddings, RMSNorm, RoPE, grouped-query attention with a KV cache,
// SwiGLU MLP, tied or untied LM head. Linear layers may be in any weight format.
#include <any>
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "formats/linear.h"
#include "model/config.h"
#include "ops/vector_ops.h"

namespace subbit {

struct LlamaLayer {
  std::vector<float> attn_norm;  // (hidden)
  std::vector<float> mlp_norm;   // (hidden)
  std::unique_ptr<Linear> q, k, v, o, gate, up, down;

  // The seven projections in file and training order: q, k, v, o, gate, up, down.
  static constexpr int kLinears = 7;
  std::array<std::unique_ptr<Linear>*, kLinears> linear_slots() {
    return {&q, &k, &v, &o, &gate, &up, &down};
  }
  std::array<const Linear*, kLinears> linears() const {
    return {q.get(), k.get(), v.get(), o.get(), gate.get(), up.get(), down.get()};
  }
};

struct LlamaWeights {
  DenseMatrix embedding{};  // (vocab, hidden)
  std::vector<LlamaLayer> layers;
  std::vector<float> final_norm;    // (hidden)
  std::unique_ptr<Linear> lm_head;  // (vocab, hidden); reads `embedding` when tied
  std::vector<std::any> storage;    // keeps memory maps / owned buffers alive
};

class KVCache {
 public:
  KVCache(const LlamaConfig& config, int64_t capacity);
  // Bytes of keys and values (f32) for `capacity` positions, before allocating them.
  static int64_t bytes_for(const LlamaConfig& config, int64_t capacity);
  int64_t capacity() const { return capacity_; }
  float* keys(int64_t layer, int64_t position) { return at(k_, layer, position); }
  float* values(int64_t layer, int64_t position) { return at(v_, layer, position); }

 private:
  float* at(std::vector<float>& buffer, int64_t layer, int64_t position) {
    return buffer.data() + (layer * capacity_ + position) * row_;
  }
  int64_t capacity_;
  int64_t row_;              // kv_heads * head_dim
  std::vector<float> k_, v_;  // (layers, capacity, kv_heads, head_dim)
};

class LlamaModel {
 public:
  LlamaModel(LlamaConfig config, LlamaWeights weights);

  // Runs `tokens` at positions start_pos.. (the cache holds everything before). Writes logits
  // (tokens, vocab) when all_logits, else only the last position's (1, vocab).
  void forward(std::span<const int32_t> tokens, int64_t start_pos, KVCache& cache, float* logits,
               bool all_logits) const;

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  // For calibration, which wraps linear layers to observe their inputs.
  LlamaWeights& mutable_weights() { return weights_; }

 private:
  void attention(const float* q, int64_t tokens, int64_t start_pos, int64_t layer, KVCache& cache,
                 float* out) const;
  LlamaConfig config_;
  LlamaWeights weights_;
  RopeTable rope_;
};

}  // namespace subbit
