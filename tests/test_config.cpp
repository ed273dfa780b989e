// config.json parsing: what is supported loads, everything else is refused by name.
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/config.h"
#include "test_support.h"

namespace subbit {
namespace {

using nlohmann::json;

json base_config() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
    "intermediate_size": 172, "vocab_size": 512, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu"})");
}

void expect_refused(const json& config, const std::string& fragment) {
  try {
    parse_llama_config(config, "cfg.json");
    FAIL() << "accepted a config that should be refused (" << fragment << ")";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(LlamaConfig, ParsesBothRopeStyles) {
  LlamaConfig c = parse_llama_config(base_config(), "cfg.json");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_TRUE(c.tie_word_embeddings);
  json v5 = base_config();
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "default"}};
  EXPECT_EQ(parse_llama_config(v5, "cfg.json").rope_theta, 500000.0);
}

TEST(LlamaConfig, RefusesWhatTheEngineDoesNotImplement) {
  auto with = [](const char* key, json value) {
    json c = base_config();
    c[key] = value;
    return c;
  };
  expect_refused(with("model_type", "gemma"), "model_type");
  expect_refused(with("architectures", json::array({"LlamaModel"})), "architectures");
  expect_refused(with("architectures", json::array({"Qwen2ForCausalLM"})), "architectures");
  expect_refused(with("rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}),
                 "rope_scaling.rope_type \"yarn\"");
  expect_refused(with("rope_parameters", {{"rope_type", "dynamic"}, {"factor", 2.0}}),
                 "rope_parameters.rope_type");
  expect_refused(with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}),
                 "low_freq_factor");
  expect_refused(with("rope_scaling", {{"type", "linear"}}), "rope_scaling.factor");
  expect_refused(with("rope_scaling", {{"type", "linear"}, {"factor", -2.0}}), "factor");
  expect_refused(with("rope_scaling", "linear"), "rope_scaling");
  expect_refused(with("hidden_act", "gelu"), "hidden_act");
  expect_refused(with("attention_bias", "yes"), "attention_bias");
  expect_refused(with("num_key_value_heads", 3), "num_key_value_heads");
  expect_refused(with("hidden_size", -1), "hidden_size");
  expect_refused(with("head_dim", 7), "head_dim");
  expect_refused(with("head_dim", 2048), "head_dim");
  expect_refused(with("rms_norm_eps", "small"), "rms_norm_eps");
  json both = with("rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}});
  both["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  expect_refused(both, "rope_parameters");
  json missing = base_config();
  missing.erase("vocab_size");
  expect_refused(missing, "vocab_size");
  json qwen = base_config();
  qwen["model_type"] = "qwen2";
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["use_sliding_window"] = true;
  expect_refused(qwen, "use_sliding_window");
}

TEST(LlamaConfig, ReadsEachFamily) {
  json qwen = base_config();
  qwen["model_type"] = "qwen2";
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["use_sliding_window"] = false;
  qwen["sliding_window"] = 32768;
  LlamaConfig c = parse_llama_config(qwen, "cfg.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.sliding_window);  // Qwen2 ignores sliding_window unless use_sliding_window

  json mistral = base_config();
  mistral["model_type"] = "mistral";
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 256;
  c = parse_llama_config(mistral, "cfg.json");
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.sliding_window, 256);
  EXPECT_EQ(max_context(c), 256);  // max_position_embeddings is 512
  mistral["sliding_window"] = nullptr;
  EXPECT_EQ(max_context(parse_llama_config(mistral, "cfg.json")), 512);

  json llama_bias = base_config();
  llama_bias["attention_bias"] = true;
  llama_bias["mlp_bias"] = true;
  c = parse_llama_config(llama_bias, "cfg.json");
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
}

TEST(LlamaConfig, RoundTripsThroughJson) {
  json llama3 = base_config();
  llama3["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 32.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  json qwen = base_config();
  qwen["model_type"] = "qwen2";
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  json mistral = base_config();
  mistral["model_type"] = "mistral";
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 4096;
  mistral["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  for (const json& original : {base_config(), llama3, qwen, mistral}) {
    const LlamaConfig c = parse_llama_config(original, "cfg.json");
    const json written = llama_config_to_json(c);
    const LlamaConfig back = parse_llama_config(written, "written.json");
    EXPECT_EQ(llama_config_to_json(back), written) << original.dump();
    EXPECT_EQ(back.model_type, c.model_type);
    EXPECT_EQ(back.qkv_bias, c.qkv_bias);
    EXPECT_EQ(back.sliding_window, c.sliding_window);
    EXPECT_EQ(rope_inverse_frequencies(back), rope_inverse_frequencies(c));
  }
}

// Independent double-precision statement of transformers' llama3 rule.
double llama3_reference(double inv_freq, double factor, double low, double high, double original) {
  const double wavelen = 2 * M_PI / inv_freq;
  if (wavelen < original / high) return inv_freq;
  if (wavelen > original / low) return inv_freq / factor;
  const double smooth = (original / wavelen - low) / (high - low);
  return (1 - smooth) * inv_freq / factor + smooth * inv_freq;
}

TEST(LlamaConfig, RopeScalingFrequencies) {
  json j = base_config();
  j["head_dim"] = 64;
  j["rope_theta"] = 500000.0;
  const std::vector<float> plain = rope_inverse_frequencies(parse_llama_config(j, "cfg.json"));
  ASSERT_EQ(plain.size(), 32u);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const std::vector<float> linear = rope_inverse_frequencies(parse_llama_config(j, "cfg.json"));
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  const std::vector<float> llama3 = rope_inverse_frequencies(parse_llama_config(j, "cfg.json"));
  int kept = 0, divided = 0, smoothed = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_FLOAT_EQ(linear[i], plain[i] / 4.0f);
    const double expected = llama3_reference(plain[i], 32, 1, 4, 64);
    EXPECT_NEAR(llama3[i], expected, 1e-6 * expected) << i;
    kept += llama3[i] == plain[i];
    divided += std::fabs(llama3[i] - plain[i] / 32.0f) <= 1e-7f * plain[i];
    smoothed += llama3[i] < plain[i] && llama3[i] > plain[i] / 32.0f;
  }
  // A small original context puts frequencies in all three regimes.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
}

TEST(LlamaConfig, NanInConfigIsAClearError) {
  // Python's json module writes NaN for float('nan'): not JSON, so the file is refused.
  const auto dir = testing::temp_dir("config");
  std::string text = base_config().dump();
  text.replace(text.find("1e-05"), 5, "NaN");
  std::ofstream(dir / "config.json") << text;
  try {
    load_llama_config(dir / "config.json");
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(LlamaConfig, FieldsOfTheWrongJsonTypeAreRefusedNamingTheFile) {
  // nlohmann's own type errors used to escape without the file name.
  for (const char* key : {"hidden_act", "tie_word_embeddings"}) {
    json bad = base_config();
    bad[key] = json::array({1});
    expect_refused(bad, "malformed config");
  }
  json bad_type = base_config();
  bad_type["model_type"] = json::array({1});
  expect_refused(bad_type, "model_type");
  json bad_rope = base_config();
  bad_rope["rope_parameters"] = 5;
  expect_refused(bad_rope, "rope_parameters");
}

TEST(LlamaConfig, ImplausibleSizesAreRefusedBeforeAnythingIsAllocated) {
  // Products of such sizes (weight shapes, caches) would overflow int64 or exhaust memory. A long
  // max_position_embeddings alone allocates nothing (RoPE angles are computed per position and the
  // KV cache is sized by the context a command uses).
  json huge = base_config();
  huge["num_attention_heads"] = int64_t(1) << 40;
  expect_refused(huge, "implausibly large");
  json long_context = base_config();
  long_context["max_position_embeddings"] = int64_t(1) << 24;
  EXPECT_NO_THROW(parse_llama_config(long_context, "cfg.json"));
  long_context["max_position_embeddings"] = (int64_t(1) << 24) + 1;
  expect_refused(long_context, "implausibly large");
}

TEST(LlamaConfig, TokenIdsBeyondInt32AreRefused) {
  json bad = base_config();
  bad["eos_token_id"] = int64_t(1) << 32;  // used to wrap around to 0
  expect_refused(bad, "eos_token_id");
  bad["eos_token_id"] = json::array({int64_t(1) << 31, 2});
  expect_refused(bad, "eos_token_id");
}

}  // namespace
}  // namespace subbit
