#include "model/llama.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "ops/parallel.h"

namespace subbit {

KVCache::KVCache(const LlamaConfig& config, int64_t capacity)
    : capacity_(capacity),
      row_(config.num_kv_heads * config.head_dim),
      k_(config.num_layers * capacity * row_),
      v_(config.num_layers * capacity * row_) {}

int64_t KVCache::bytes_for(const LlamaConfig& config, int64_t capacity) {
  return 2 * config.num_layers * capacity * config.num_kv_heads * config.head_dim * int64_t(sizeof(float));
}

LlamaModel::LlamaModel(LlamaConfig config, LlamaWeights weights)
    : config_(config),
      weights_(std::move(weights)),
      rope_(config.head_dim, config.rope_theta, config.max_position_embeddings) {}

// Causal grouped-query attention for `tokens` new queries against the cache.
void LlamaModel::attention(const float* q, int64_t tokens, int64_t start_pos, int64_t layer,
                           KVCache& cache, float* out) const {
  const int64_t heads = config_.num_heads, head_dim = config_.head_dim;
  const int64_t group = heads / config_.num_kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // Chunks of several (token, head) items amortise scheduling; one scores buffer per chunk.
  const int64_t items = tokens * heads;
  parallel_for(items, std::max<int64_t>(1, items / (num_threads() * 8)), [&](int64_t begin, int64_t end) {
    std::vector<float> scores(start_pos + tokens);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads;
      const int64_t kv_head = h / group;
      const int64_t visible = start_pos + t + 1;
      const float* query = q + (t * heads + h) * head_dim;
      for (int64_t p = 0; p < visible; ++p)
        scores[p] = dot(query, cache.keys(layer, p) + kv_head * head_dim, head_dim) * scale;
      softmax(scores.data(), visible);
      float* o = out + (t * heads + h) * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      for (int64_t p = 0; p < visible; ++p)
        axpy(scores[p], cache.values(layer, p) + kv_head * head_dim, o, head_dim);
    }
  });
}

void LlamaModel::forward(std::span<const int32_t> tokens, int64_t start_pos, KVCache& cache,
                         float* logits, bool all_logits) const {
  const LlamaConfig& c = config_;
  const int64_t n = int64_t(tokens.size());
  const int64_t hidden = c.hidden_size, ffn = c.intermediate_size;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  if (n == 0) return;
  if (start_pos + n > cache.capacity() || start_pos + n > c.max_position_embeddings)
    fail("context overflow: {} tokens at position {} exceed the context of {}", n, start_pos,
         std::min(cache.capacity(), c.max_position_embeddings));

  std::vector<float> x(n * hidden);        // (tokens, hidden) residual stream
  std::vector<float> normed(n * hidden);   // (tokens, hidden)
  std::vector<float> q(n * q_dim);         // (tokens, heads, head_dim)
  std::vector<float> k(n * kv_dim);        // (tokens, kv_heads, head_dim)
  std::vector<float> v(n * kv_dim);        // (tokens, kv_heads, head_dim)
  std::vector<float> attn(n * q_dim);      // (tokens, heads, head_dim)
  std::vector<float> gate(n * ffn);        // (tokens, ffn)
  std::vector<float> up(n * ffn);          // (tokens, ffn)
  std::vector<float> delta(n * hidden);    // (tokens, hidden) block output

  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      fail("token id {} is outside the vocabulary of {}", tokens[t], c.vocab_size);
    dense_row_to_f32(weights_.embedding, tokens[t], x.data() + t * hidden);
  }

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = weights_.layers[l];
    rms_norm(x.data(), layer.attn_norm.data(), normed.data(), n, hidden, float(c.rms_norm_eps));
    layer.q->forward(normed.data(), q.data(), n);
    layer.k->forward(normed.data(), k.data(), n);
    layer.v->forward(normed.data(), v.data(), n);
    for (int64_t t = 0; t < n; ++t) {
      rope_.apply(q.data() + t * q_dim, c.num_heads, start_pos + t);
      rope_.apply(k.data() + t * kv_dim, c.num_kv_heads, start_pos + t);
      std::copy_n(k.data() + t * kv_dim, kv_dim, cache.keys(l, start_pos + t));
      std::copy_n(v.data() + t * kv_dim, kv_dim, cache.values(l, start_pos + t));
    }
    attention(q.data(), n, start_pos, l, cache, attn.data());
    layer.o->forward(attn.data(), delta.data(), n);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += delta[i];

    rms_norm(x.data(), layer.mlp_norm.data(), normed.data(), n, hidden, float(c.rms_norm_eps));
    layer.gate->forward(normed.data(), gate.data(), n);
    layer.up->forward(normed.data(), up.data(), n);
    silu_mul(gate.data(), up.data(), n * ffn);
    layer.down->forward(gate.data(), delta.data(), n);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += delta[i];
  }

  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t count = n - first;
  rms_norm(x.data() + first * hidden, weights_.final_norm.data(), normed.data(), count, hidden,
           float(c.rms_norm_eps));
  weights_.lm_head->forward(normed.data(), logits, count);
}

}  // namespace subbit
