#pragma once
// Hyper-parameters of the Llama-architecture families the engine runs (Llama 1-3.x, Mistral,
// Qwen2/2.5), read from a Hugging Face config.json.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace subbit {

// How RoPE frequencies are rescaled for long contexts (transformers' `rope_type`).
struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  double factor = 1.0;
  // llama3 only: wavelengths between original_context / high and original_context / low are
  // interpolated; longer ones divided by `factor`, shorter ones kept.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

// Every supported family uses 64-256; the RoPE kernel keeps one head's angles on the stack.
constexpr int64_t kMaxHeadDim = 1024;

struct LlamaConfig {
  std::string model_type = "llama";  // llama, mistral, qwen2
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
  RopeScaling rope_scaling;
  // Additive biases: q/k/v (Qwen2; Llama's attention_bias), o (Llama's attention_bias), and the
  // three MLP projections (Llama's mlp_bias).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  // Mistral: attention sees at most this many positions. The engine implements full attention,
  // so contexts longer than the window are refused where the context is chosen.
  std::optional<int64_t> sliding_window;
  bool tie_word_embeddings = false;
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> eos_token_id;
};

// Refuses (Error naming `source` and the field) any architecture or field the engine does not
// implement exactly: other model types, other RoPE types, non-SiLU activations, bad numbers.
LlamaConfig parse_llama_config(const nlohmann::json& json, const std::string& source);

LlamaConfig load_llama_config(const std::filesystem::path& config_json);
// The config.json of the same family that parse_llama_config reads back unchanged.
nlohmann::json llama_config_to_json(const LlamaConfig& config);

// RoPE inverse frequencies (head_dim / 2) after scaling, computed in fp32 as transformers does.
std::vector<float> rope_inverse_frequencies(const LlamaConfig& config);

// The longest context the model may run: max_position_embeddings, or Mistral's sliding window
// when it is shorter (full attention equals windowed attention only up to the window).
int64_t max_context(const LlamaConfig& config);

}  // namespace subbit
