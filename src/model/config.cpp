#include "model/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace subbit {
namespace {

using nlohmann::json;

// Any size beyond this is a corrupt or hostile file, not a model (the largest Llama-family
// configs have hidden 16384, 126 layers, vocabularies of 256k and contexts of 128k): refusing it
// here keeps the products of sizes that shape weights and caches far from overflowing int64.
constexpr int64_t kMaxSize = int64_t(1) << 24;
// The model precomputes RoPE angles for every position (max_position_embeddings x head_dim
// floats); beyond 2^28 (1 GiB) a config alone could make the runtime allocate without bound.
constexpr int64_t kMaxRopeTable = int64_t(1) << 28;

int64_t positive_int(const json& j, const char* key, const std::string& source) {
  if (!j.contains(key)) fail("{}: missing \"{}\"", source, key);
  const json& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() <= 0)
    fail("{}: \"{}\" must be a positive integer, got {}", source, key, v.dump());
  if (v.get<int64_t>() > kMaxSize)
    fail("{}: \"{}\" = {} is implausibly large (limit {})", source, key, v.dump(), kMaxSize);
  return v.get<int64_t>();
}

double positive_number(const json& v, const char* key, const std::string& source) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0)
    fail("{}: \"{}\" must be a finite positive number, got {}", source, key, v.dump());
  return v.get<double>();
}

int32_t token_id(const json& v, const char* key, const std::string& source) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
    fail("{}: \"{}\" must be a token id (0 to 2^31 - 1), got {}", source, key, v.dump());
  return v.get<int32_t>();
}

std::optional<int32_t> optional_token_id(const json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  const json& v = j.at(key);
  if (v.is_array()) {
    // Several end-of-sequence ids (Llama 3): the first is the canonical one.
    if (v.empty()) fail("{}: bad \"{}\": {}", source, key, v.dump());
    return token_id(v.front(), key, source);
  }
  return token_id(v, key, source);
}

void refuse_if_true(const json& j, const char* key, const std::string& source) {
  if (j.contains(key) && j.at(key).is_boolean() && j.at(key).get<bool>())
    fail("{}: \"{}\": true is not supported", source, key);
}

LlamaConfig parse_config_fields(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config must be a JSON object", source);
  const std::string model_type = j.value("model_type", "");
  if (model_type != "llama")
    fail("{}: unsupported model_type \"{}\" (only \"llama\" is implemented)", source, model_type);
  if (j.contains("architectures")) {
    const json& arch = j.at("architectures");
    if (!arch.is_array() || arch.size() != 1 || arch[0] != "LlamaForCausalLM")
      fail("{}: unsupported architectures {} (only LlamaForCausalLM)", source, arch.dump());
  }
  const std::string act = j.value("hidden_act", "silu");
  if (act != "silu") fail("{}: unsupported hidden_act \"{}\" (only silu)", source, act);
  refuse_if_true(j, "attention_bias", source);
  refuse_if_true(j, "mlp_bias", source);
  if (j.contains("pretraining_tp") && j.at("pretraining_tp") != 1)
    fail("{}: pretraining_tp {} is not supported", source, j.at("pretraining_tp").dump());

  LlamaConfig c;
  c.hidden_size = positive_int(j, "hidden_size", source);
  c.num_layers = positive_int(j, "num_hidden_layers", source);
  c.num_heads = positive_int(j, "num_attention_heads", source);
  c.num_kv_heads = j.contains("num_key_value_heads") && !j.at("num_key_value_heads").is_null()
                       ? positive_int(j, "num_key_value_heads", source)
                       : c.num_heads;
  c.intermediate_size = positive_int(j, "intermediate_size", source);
  c.vocab_size = positive_int(j, "vocab_size", source);
  c.max_position_embeddings = positive_int(j, "max_position_embeddings", source);
  c.head_dim = j.contains("head_dim") && !j.at("head_dim").is_null()
                   ? positive_int(j, "head_dim", source)
                   : c.hidden_size / c.num_heads;
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
         c.num_heads, c.num_kv_heads);
  if (c.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", source, c.head_dim);
  if (j.contains("rms_norm_eps")) c.rms_norm_eps = positive_number(j.at("rms_norm_eps"), "rms_norm_eps", source);

  // transformers 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters.
  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null())
    fail("{}: rope_scaling {} is not supported", source, j.at("rope_scaling").dump());
  if (j.contains("rope_parameters") && !j.at("rope_parameters").is_null()) {
    const json& rope = j.at("rope_parameters");
    const std::string type = rope.value("rope_type", "default");
    if (type != "default") fail("{}: rope_type \"{}\" is not supported (only default)", source, type);
    if (rope.contains("rope_theta")) c.rope_theta = positive_number(rope.at("rope_theta"), "rope_theta", source);
  } else if (j.contains("rope_theta")) {
    c.rope_theta = positive_number(j.at("rope_theta"), "rope_theta", source);
  }
  if (c.max_position_embeddings * c.head_dim > kMaxRopeTable)
    fail("{}: max_position_embeddings {} x head_dim {} is implausibly large (RoPE table limit {})",
         source, c.max_position_embeddings, c.head_dim, kMaxRopeTable);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.bos_token_id = optional_token_id(j, "bos_token_id", source);
  c.eos_token_id = optional_token_id(j, "eos_token_id", source);
  return c;
}

}  // namespace

LlamaConfig parse_llama_config(const json& j, const std::string& source) {
  try {
    return parse_config_fields(j, source);
  } catch (const json::exception& e) {
    // A field of an unexpected JSON type (j.value("model_type", "") on a number, ...).
    fail("{}: malformed config: {}", source, e.what());
  }
}

std::pair<int64_t, int64_t> linear_shape(const LlamaConfig& c, int index) {
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const std::pair<int64_t, int64_t> shapes[] = {{q_dim, c.hidden_size},  {kv_dim, c.hidden_size},
                                                {kv_dim, c.hidden_size}, {c.hidden_size, q_dim},
                                                {c.intermediate_size, c.hidden_size},
                                                {c.intermediate_size, c.hidden_size},
                                                {c.hidden_size, c.intermediate_size}};
  return shapes[index];
}

LlamaConfig load_llama_config(const std::filesystem::path& config_json) {
  std::ifstream in(config_json);
  if (!in) fail("{}: cannot open", config_json.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", config_json.string(), e.what());
  }
  return parse_llama_config(j, config_json.string());
}

json llama_config_to_json(const LlamaConfig& c) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_act", "silu"},
            {"hidden_size", c.hidden_size},
            {"num_hidden_layers", c.num_layers},
            {"num_attention_heads", c.num_heads},
            {"num_key_value_heads", c.num_kv_heads},
            {"head_dim", c.head_dim},
            {"intermediate_size", c.intermediate_size},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"torch_dtype", "bfloat16"}};
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  return j;
}

}  // namespace subbit
