#pragma once
// Llama-architecture hyper-parameters, read from a Hugging Face config.json.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json_fwd.hpp>

namespace subbit {

struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> eos_token_id;
};

// Refuses (Error naming `source`) any architecture or field the engine does not implement
// exactly: other model types, rope scaling, biases, non-SiLU activations, bad numbers.
LlamaConfig parse_llama_config(const nlohmann::json& json, const std::string& source);
// (n_out, n_in) of a block's linear layer `index` in LlamaLayer order (q, k, v, o, gate, up, down).
std::pair<int64_t, int64_t> linear_shape(const LlamaConfig& config, int index);

LlamaConfig load_llama_config(const std::filesystem::path& config_json);
nlohmann::json llama_config_to_json(const LlamaConfig& config);

}  // namespace subbit
