// config.json parsing: what is supported loads, everything else is refused by name.
#include <nlohmann/json.hpp>

#include <fstream>

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
  expect_refused(with("model_type", "mistral"), "model_type");
  expect_refused(with("architectures", json::array({"LlamaModel"})), "architectures");
  expect_refused(with("rope_scaling", {{"type", "linear"}, {"factor", 2.0}}), "rope_scaling");
  expect_refused(with("rope_parameters", {{"rope_type", "llama3"}}), "rope_type");
  expect_refused(with("hidden_act", "gelu"), "hidden_act");
  expect_refused(with("attention_bias", true), "attention_bias");
  expect_refused(with("num_key_value_heads", 3), "num_key_value_heads");
  expect_refused(with("hidden_size", -1), "hidden_size");
  expect_refused(with("rms_norm_eps", "small"), "rms_norm_eps");
  json missing = base_config();
  missing.erase("vocab_size");
  expect_refused(missing, "vocab_size");
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
  for (const char* key : {"model_type", "hidden_act", "tie_word_embeddings"}) {
    json bad = base_config();
    bad[key] = json::array({1});
    expect_refused(bad, "malformed config");
  }
  json bad_rope = base_config();
  bad_rope["rope_parameters"] = 5;
  expect_refused(bad_rope, "malformed config");
}

TEST(LlamaConfig, ImplausibleSizesAreRefusedBeforeAnythingIsAllocated) {
  // Products of such sizes (weight shapes, the RoPE table) overflow int64 or exhaust memory.
  json huge = base_config();
  huge["num_attention_heads"] = int64_t(1) << 40;
  expect_refused(huge, "implausibly large");
  json long_context = base_config();
  long_context["max_position_embeddings"] = int64_t(1) << 24;  // x head_dim 8 = 2^27: accepted
  EXPECT_NO_THROW(parse_llama_config(long_context, "cfg.json"));
  long_context["head_dim"] = 64;  // 2^30 RoPE entries
  expect_refused(long_context, "RoPE table");
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
