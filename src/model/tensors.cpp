#include "model/tensors.h"

#include <fmt/format.h>

namespace subbit {

std::pair<int64_t, int64_t> linear_shape(const LlamaConfig& c, int index) {
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  switch (index) {
    case kQ:
      return {q_dim, c.hidden_size};
    case kK:
    case kV:
      return {kv_dim, c.hidden_size};
    case kO:
      return {c.hidden_size, q_dim};
    case kGate:
    case kUp:
      return {c.intermediate_size, c.hidden_size};
    default:
      return {c.hidden_size, c.intermediate_size};
  }
}

bool linear_has_bias(const LlamaConfig& c, int index) {
  if (index == kQ || index == kK || index == kV) return c.qkv_bias;
  if (index == kO) return c.o_bias;
  return c.mlp_bias;
}

std::string hf_block_tensor(int64_t layer, std::string_view hf_name, std::string_view suffix) {
  return fmt::format("model.layers.{}.{}.{}", layer, hf_name, suffix);
}

std::string file_block_tensor(int64_t layer, std::string_view file_name) {
  return fmt::format("blk.{}.{}", layer, file_name);
}

}  // namespace subbit
