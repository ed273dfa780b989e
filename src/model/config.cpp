#include "model/config.h"

#include <algorithm>
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

std::optional<int32_t> optional_token_id(const json& j, const char* key,
                                         const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  const json& v = j.at(key);
  if (v.is_array()) {
    // Several end-of-sequence ids (Llama 3): the first is the canonical one.
    if (v.empty()) fail("{}: bad \"{}\": {}", source, key, v.dump());
    return token_id(v.front(), key, source);
  }
  return token_id(v, key, source);
}

// The families the engine runs: each is the Llama block with a few switches.
struct Family {
  const char* model_type;
  const char* architecture;
};
constexpr Family kFamilies[] = {{"llama", "LlamaForCausalLM"},
                                {"mistral", "MistralForCausalLM"},
                                {"qwen2", "Qwen2ForCausalLM"}};

const Family& find_family(const std::string& model_type, const std::string& source) {
  for (const Family& f : kFamilies)
    if (model_type == f.model_type) return f;
  fail("{}: unsupported model_type \"{}\" (llama, mistral, qwen2 are implemented)", source,
       model_type);
}

bool optional_bool(const json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return false;
  if (!j.at(key).is_boolean())
    fail("{}: \"{}\" must be true or false, got {}", source, key, j.at(key).dump());
  return j.at(key).get<bool>();
}

// `rope` is transformers 4.x's rope_scaling or 5.x's rope_parameters object.
RopeScaling parse_rope_scaling(const json& rope, const char* field, const std::string& source) {
  if (!rope.is_object()) fail("{}: \"{}\" must be an object, got {}", source, field, rope.dump());
  // 4.x wrote "type" before "rope_type".
  const json& type_json = rope.contains("rope_type") ? rope.at("rope_type")
                          : rope.contains("type")    ? rope.at("type")
                                                     : json("default");
  if (!type_json.is_string())
    fail("{}: {}.rope_type must be a string, got {}", source, field, type_json.dump());
  const std::string type = type_json.get<std::string>();
  auto number = [&](const char* key) {
    if (!rope.contains(key))
      fail("{}: {}.{} is missing (needed by rope_type \"{}\")", source, field, key, type);
    return positive_number(rope.at(key), key, source);
  };
  RopeScaling s;
  if (type == "default") return s;
  if (type == "linear") {
    s.kind = RopeScaling::Kind::Linear;
    s.factor = number("factor");
  } else if (type == "llama3") {
    s.kind = RopeScaling::Kind::Llama3;
    s.factor = number("factor");
    s.low_freq_factor = number("low_freq_factor");
    s.high_freq_factor = number("high_freq_factor");
    if (!(s.high_freq_factor > s.low_freq_factor))
      fail("{}: {}.high_freq_factor {} must exceed low_freq_factor {}", source, field,
           s.high_freq_factor, s.low_freq_factor);
    s.original_max_position_embeddings =
        positive_int(rope, "original_max_position_embeddings", source);
  } else {
    fail("{}: {}.rope_type \"{}\" is not supported (default, linear, llama3)", source, field, type);
  }
  return s;
}

LlamaConfig parse_config_fields(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config must be a JSON object", source);
  if (!j.contains("model_type") || !j.at("model_type").is_string())
    fail("{}: \"model_type\" is missing or not a string", source);
  const Family& family = find_family(j.at("model_type").get<std::string>(), source);
  if (j.contains("architectures")) {
    const json& arch = j.at("architectures");
    if (!arch.is_array() || arch.size() != 1 || arch[0] != family.architecture)
      fail("{}: unsupported architectures {} for model_type \"{}\" (only {})", source, arch.dump(),
           family.model_type, family.architecture);
  }
  const std::string act = j.value("hidden_act", "silu");
  if (act != "silu") fail("{}: unsupported hidden_act \"{}\" (only silu)", source, act);
  if (j.contains("pretraining_tp") && j.at("pretraining_tp") != 1)
    fail("{}: pretraining_tp {} is not supported", source, j.at("pretraining_tp").dump());

  LlamaConfig c;
  c.model_type = family.model_type;
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
  if (c.head_dim == 0)
    fail("{}: hidden_size {} is smaller than num_attention_heads {}: head_dim would be 0", source,
         c.hidden_size, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
         c.num_heads, c.num_kv_heads);
  if (c.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", source, c.head_dim);
  if (c.head_dim > kMaxHeadDim)
    fail("{}: head_dim {} exceeds the engine's limit of {}", source, c.head_dim, kMaxHeadDim);
  if (j.contains("rms_norm_eps"))
    c.rms_norm_eps = positive_number(j.at("rms_norm_eps"), "rms_norm_eps", source);

  // transformers 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters.
  const bool has_scaling = j.contains("rope_scaling") && !j.at("rope_scaling").is_null();
  const bool has_parameters = j.contains("rope_parameters") && !j.at("rope_parameters").is_null();
  if (has_scaling && has_parameters)
    fail("{}: both \"rope_scaling\" and \"rope_parameters\" are set; expected one", source);
  if (has_parameters) {
    const json& rope = j.at("rope_parameters");
    c.rope_scaling = parse_rope_scaling(rope, "rope_parameters", source);
    if (rope.contains("rope_theta"))
      c.rope_theta = positive_number(rope.at("rope_theta"), "rope_theta", source);
  } else {
    if (has_scaling)
      c.rope_scaling = parse_rope_scaling(j.at("rope_scaling"), "rope_scaling", source);
    if (j.contains("rope_theta"))
      c.rope_theta = positive_number(j.at("rope_theta"), "rope_theta", source);
  }

  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2's q/k/v projections always carry biases; o and the MLP never.
    if (optional_bool(j, "use_sliding_window", source))
      fail(
          "{}: \"use_sliding_window\": true is not supported (sliding-window attention is not "
          "implemented; Qwen2.5 checkpoints ship with it false)",
          source);
  } else {
    c.qkv_bias = c.o_bias = optional_bool(j, "attention_bias", source);
    c.mlp_bias = optional_bool(j, "mlp_bias", source);
  }
  if (c.model_type == "mistral" && j.contains("sliding_window") &&
      !j.at("sliding_window").is_null())
    c.sliding_window = positive_int(j, "sliding_window", source);

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
  const Family& family = find_family(c.model_type, "llama_config_to_json");
  json j = {{"architectures", {family.architecture}},
            {"model_type", family.model_type},
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
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"torch_dtype", "bfloat16"}};
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = false;
  } else {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.model_type == "mistral")
    j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json();
  const RopeScaling& s = c.rope_scaling;
  if (s.kind == RopeScaling::Kind::Linear)
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.factor}};
  if (s.kind == RopeScaling::Kind::Llama3)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.factor},
                         {"low_freq_factor", s.low_freq_factor},
                         {"high_freq_factor", s.high_freq_factor},
                         {"original_max_position_embeddings", s.original_max_position_embeddings}};
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  return j;
}

std::vector<float> rope_inverse_frequencies(const LlamaConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = float(1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim)));
  const RopeScaling& s = c.rope_scaling;
  const float factor = float(s.factor);
  if (s.kind == RopeScaling::Kind::Linear)
    for (float& f : inv_freq) f /= factor;
  if (s.kind == RopeScaling::Kind::Llama3) {
    // transformers' _compute_llama3_parameters, in fp32.
    const float original = float(s.original_max_position_embeddings);
    const float low = float(s.low_freq_factor), high = float(s.high_freq_factor);
    const float low_freq_wavelen = original / low, high_freq_wavelen = original / high;
    for (float& f : inv_freq) {
      const float wavelen = 2.0f * float(M_PI) / f;
      if (wavelen > low_freq_wavelen) {
        f /= factor;
      } else if (wavelen >= high_freq_wavelen) {
        const float smooth = (original / wavelen - low) / (high - low);
        f = (1.0f - smooth) * f / factor + smooth * f;
      }
    }
  }
  return inv_freq;
}

int64_t max_context(const LlamaConfig& c) {
  return c.sliding_window ? std::min(c.max_position_embeddings, *c.sliding_window)
                          : c.max_position_embeddings;
}

}  // namespace subbit
