#include "model/llama.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "ops/parallel.h"

namespace subbit {

RunState::RunState(const LlamaConfig& config, int64_t capacity)
    : capacity_(capacity),
      row_(config.num_kv_heads * config.head_dim),
      k_(config.num_layers * capacity * row_),
      v_(config.num_layers * capacity * row_) {}

void RunState::reserve_activations(const LlamaConfig& c, int64_t tokens) {
  if (tokens <= activation_tokens_) return;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  x_.resize(tokens * c.hidden_size);
  normed_.resize(tokens * c.hidden_size);
  q_.resize(tokens * q_dim);
  k_new_.resize(tokens * kv_dim);
  v_new_.resize(tokens * kv_dim);
  attn_.resize(tokens * q_dim);
  gate_.resize(tokens * c.intermediate_size);
  up_.resize(tokens * c.intermediate_size);
  delta_.resize(tokens * c.hidden_size);
  activation_tokens_ = tokens;
}

int64_t RunState::bytes_for(const LlamaConfig& config, int64_t capacity) {
  return 2 * config.num_layers * capacity * config.num_kv_heads * config.head_dim *
         int64_t(sizeof(float));
}

LlamaModel::LlamaModel(LlamaConfig config, LlamaWeights weights)
    : config_(config), weights_(std::move(weights)), rope_(rope_inverse_frequencies(config)) {}

// Causal grouped-query attention for `tokens` new queries against the cache. A work item is a
// tile of up to kQueryTile new tokens and one kv head: the tile's queries of the heads that share
// that kv head read each cached key and value once between them, instead of once per query, which
// is where long-context prefill spent its time (docs/results.md, "Context 8192"). Every score and
// every output element is the same sum in the same order as with one query at a time.
void LlamaModel::attention(const float* q, int64_t tokens, int64_t start_pos, int64_t layer,
                           RunState& state, float* out) const {
  constexpr int64_t kQueryTile = 16;
  const int64_t heads = config_.num_heads, head_dim = config_.head_dim;
  const int64_t kv_heads = config_.num_kv_heads, group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const int64_t tile_tokens = std::min(tokens, kQueryTile);
  const int64_t items = (tokens + tile_tokens - 1) / tile_tokens * kv_heads;
  const int64_t positions = start_pos + tokens;
  const int64_t rows = tile_tokens * group;  // score rows of an item: (tile token, head in group)
  // Chunks of several items amortise scheduling; one block of score rows per chunk.
  const int64_t grain = std::max<int64_t>(1, items / (num_threads() * 8));
  const int64_t chunks = (items + grain - 1) / grain;
  if (int64_t(state.scores_.size()) < chunks * rows * positions)
    state.scores_.resize(chunks * rows * positions);
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    float* scores = state.scores_.data() + begin / grain * rows * positions;  // (rows, positions)
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kv_head = item % kv_heads;
      const int64_t first = item / kv_heads * tile_tokens;
      const int64_t last = std::min(tokens, first + tile_tokens);  // tile: tokens [first, last)
      // Token t sees positions [0, start_pos + t]; position p is seen from token p - start_pos on.
      const auto first_seeing = [&](int64_t p) { return std::max(first, p - start_pos); };
      const auto query_row = [&](int64_t t, int64_t g) {
        return (t * heads + kv_head * group + g) * head_dim;  // into q and out
      };
      const auto score_row = [&](int64_t t, int64_t g) {
        return scores + ((t - first) * group + g) * positions;
      };
      for (int64_t p = 0; p < start_pos + last; ++p) {
        const float* key = state.keys(layer, p) + kv_head * head_dim;
        for (int64_t t = first_seeing(p); t < last; ++t)
          for (int64_t g = 0; g < group; ++g)
            score_row(t, g)[p] = dot(q + query_row(t, g), key, head_dim) * scale;
      }
      for (int64_t t = first; t < last; ++t)
        for (int64_t g = 0; g < group; ++g) {
          softmax(score_row(t, g), start_pos + t + 1);
          std::fill_n(out + query_row(t, g), head_dim, 0.0f);
        }
      for (int64_t p = 0; p < start_pos + last; ++p) {
        const float* value = state.values(layer, p) + kv_head * head_dim;
        for (int64_t t = first_seeing(p); t < last; ++t)
          for (int64_t g = 0; g < group; ++g)
            axpy(score_row(t, g)[p], value, out + query_row(t, g), head_dim);
      }
    }
  });
}

void LlamaModel::project(const LlamaLayer& layer, int64_t layer_index, int index, const float* x,
                         float* y, int64_t tokens, RunState& state,
                         LinearInputObserver* observer) const {
  const Linear& linear = *layer.linear[index];
  if (observer) observer->observe(layer_index, index, x, tokens, linear.n_in());
  linear.forward(x, y, tokens, state.scratch_);
  const std::vector<float>& bias = layer.bias[index];
  if (bias.empty()) return;
  for (int64_t t = 0; t < tokens; ++t)
    axpy(1.0f, bias.data(), y + t * linear.n_out(), linear.n_out());
}

void LlamaModel::forward(std::span<const int32_t> tokens, int64_t start_pos, RunState& state,
                         float* logits, bool all_logits, LinearInputObserver* observer) const {
  const LlamaConfig& c = config_;
  const int64_t n = int64_t(tokens.size());
  const int64_t hidden = c.hidden_size, ffn = c.intermediate_size;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  if (n == 0) return;
  const int64_t context = std::min(state.capacity(), max_context(c));
  if (start_pos + n > context)
    fail("context overflow: {} tokens at position {} exceed the context of {}", n, start_pos,
         context);

  state.reserve_activations(c, n);
  float* x = state.x_.data();            // (tokens, hidden) residual stream
  float* normed = state.normed_.data();  // (tokens, hidden)
  float* q = state.q_.data();            // (tokens, heads, head_dim)
  float* k = state.k_new_.data();        // (tokens, kv_heads, head_dim)
  float* v = state.v_new_.data();        // (tokens, kv_heads, head_dim)
  float* attn = state.attn_.data();      // (tokens, heads, head_dim)
  float* gate = state.gate_.data();      // (tokens, ffn)
  float* up = state.up_.data();          // (tokens, ffn)
  float* delta = state.delta_.data();    // (tokens, hidden) block output

  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      fail("token id {} is outside the vocabulary of {}", tokens[t], c.vocab_size);
    weights_.embedding->decode_row(tokens[t], x + t * hidden);
  }

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = weights_.layers[l];
    rms_norm(x, layer.norm[kAttnNorm].data(), normed, n, hidden, float(c.rms_norm_eps));
    project(layer, l, kQ, normed, q, n, state, observer);
    project(layer, l, kK, normed, k, n, state, observer);
    project(layer, l, kV, normed, v, n, state, observer);
    for (int64_t t = 0; t < n; ++t) {
      rope_.apply(q + t * q_dim, c.num_heads, start_pos + t);
      rope_.apply(k + t * kv_dim, c.num_kv_heads, start_pos + t);
      std::copy_n(k + t * kv_dim, kv_dim, state.keys(l, start_pos + t));
      std::copy_n(v + t * kv_dim, kv_dim, state.values(l, start_pos + t));
    }
    attention(q, n, start_pos, l, state, attn);
    project(layer, l, kO, attn, delta, n, state, observer);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += delta[i];

    rms_norm(x, layer.norm[kMlpNorm].data(), normed, n, hidden, float(c.rms_norm_eps));
    project(layer, l, kGate, normed, gate, n, state, observer);
    project(layer, l, kUp, normed, up, n, state, observer);
    silu_mul(gate, up, n * ffn);
    project(layer, l, kDown, gate, delta, n, state, observer);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += delta[i];
  }

  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t count = n - first;
  rms_norm(x + first * hidden, weights_.final_norm.data(), normed, count, hidden,
           float(c.rms_norm_eps));
  weights_.lm_head->forward(normed, logits, count, state.scratch_);
}

}  // namespace subbit
