#include "model/random_checkpoint.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <numbers>

#include "common/dtype.h"
#include "common/error.h"
#include "io/atomic_file.h"
#include "io/text_file.h"
#include "ops/parallel.h"

namespace subbit {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Configs as published on the Hugging Face hub (meta-llama/..., Qwen/...), minus fields that
// only matter for training (dropout, initializer_range, use_cache).
json llama_3_rope_scaling(double factor) {
  return {{"factor", factor},
          {"high_freq_factor", 4.0},
          {"low_freq_factor", 1.0},
          {"original_max_position_embeddings", 8192},
          {"rope_type", "llama3"}};
}

json llama_config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t ffn,
                  int64_t vocab, int64_t max_positions, double rope_theta, bool tied) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"hidden_act", "silu"},
          {"hidden_size", hidden},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"head_dim", hidden / heads},
          {"intermediate_size", ffn},
          {"vocab_size", vocab},
          {"max_position_embeddings", max_positions},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", rope_theta},
          {"rope_scaling", nullptr},
          {"pretraining_tp", 1},
          {"tie_word_embeddings", tied},
          {"torch_dtype", "bfloat16"}};
}

const std::vector<std::pair<std::string, json>>& presets() {
  static const std::vector<std::pair<std::string, json>> list = [] {
    std::vector<std::pair<std::string, json>> l;
    json llama2 = llama_config(4096, 32, 32, 32, 11008, 32000, 4096, 10000.0, false);
    llama2["bos_token_id"] = 1;
    llama2["eos_token_id"] = 2;
    l.emplace_back("llama-2-7b", llama2);
    json llama32_1b = llama_config(2048, 16, 32, 8, 8192, 128256, 131072, 500000.0, true);
    llama32_1b["rope_scaling"] = llama_3_rope_scaling(32.0);
    llama32_1b["bos_token_id"] = 128000;
    llama32_1b["eos_token_id"] = 128001;
    l.emplace_back("llama-3.2-1b", llama32_1b);
    json llama32_3b = llama_config(3072, 28, 24, 8, 8192, 128256, 131072, 500000.0, true);
    llama32_3b["rope_scaling"] = llama_3_rope_scaling(32.0);
    llama32_3b["bos_token_id"] = 128000;
    llama32_3b["eos_token_id"] = 128001;
    l.emplace_back("llama-3.2-3b", llama32_3b);
    json llama31_8b = llama_config(4096, 32, 32, 8, 14336, 128256, 131072, 500000.0, false);
    llama31_8b["rope_scaling"] = llama_3_rope_scaling(8.0);
    llama31_8b["bos_token_id"] = 128000;
    llama31_8b["eos_token_id"] = 128001;
    l.emplace_back("llama-3.1-8b", llama31_8b);
    l.emplace_back("qwen2.5-1.5b", json{{"architectures", {"Qwen2ForCausalLM"}},
                                        {"model_type", "qwen2"},
                                        {"hidden_act", "silu"},
                                        {"hidden_size", 1536},
                                        {"num_hidden_layers", 28},
                                        {"num_attention_heads", 12},
                                        {"num_key_value_heads", 2},
                                        {"intermediate_size", 8960},
                                        {"vocab_size", 151936},
                                        {"max_position_embeddings", 131072},
                                        {"max_window_layers", 28},
                                        {"use_sliding_window", false},
                                        {"sliding_window", 131072},
                                        {"rms_norm_eps", 1e-6},
                                        {"rope_theta", 1000000.0},
                                        {"tie_word_embeddings", true},
                                        {"bos_token_id", 151643},
                                        {"eos_token_id", 151643},
                                        {"torch_dtype", "bfloat16"}});
    return l;
  }();
  return list;
}

int64_t positive_field(const json& config, const char* key, const std::string& source) {
  if (!config.contains(key) || !config.at(key).is_number_integer() ||
      config.at(key).get<int64_t>() <= 0)
    fail("{}: \"{}\" must be a positive integer, got {}", source, key,
         config.contains(key) ? config.at(key).dump() : "nothing");
  return config.at(key).get<int64_t>();
}

bool true_field(const json& config, const char* key) {
  return config.contains(key) && config.at(key).is_boolean() && config.at(key).get<bool>();
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Gaussian bf16 values for elements [begin, end) of a tensor, from a generator seeded by the
// tensor and the element block, so the bytes do not depend on how blocks are shared out.
constexpr int64_t kBlock = int64_t(1) << 20;

void fill_gaussian_block(uint16_t* out, int64_t count, uint64_t seed, size_t tensor, int64_t block,
                         double std) {
  uint64_t state = seed ^ (uint64_t(tensor) << 40) ^ uint64_t(block) * 0xD1B54A32D192ED03ull;
  splitmix64(state);
  const auto uniform = [&] {
    return (double(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53;
  };  // (0, 1)
  for (int64_t i = 0; i < count; i += 2) {
    // Box-Muller: two independent normals from two uniforms.
    const double radius = std * std::sqrt(-2.0 * std::log(uniform()));
    const double angle = 2.0 * std::numbers::pi * uniform();
    out[i] = f32_to_bf16(float(radius * std::cos(angle)));
    if (i + 1 < count) out[i + 1] = f32_to_bf16(float(radius * std::sin(angle)));
  }
}

void write_text_atomically(const fs::path& file, const std::string& text) {
  AtomicFile out(file);
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace

std::vector<std::string> random_checkpoint_preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, config] : presets()) names.push_back(name);
  return names;
}

json random_checkpoint_preset(const std::string& name) {
  for (const auto& [preset, config] : presets())
    if (preset == name) return config;
  fail("unknown model name \"{}\" (known: {})", name,
       fmt::join(random_checkpoint_preset_names(), ", "));
}

std::vector<TensorSpec> random_checkpoint_tensors(const json& config, const std::string& source) {
  if (!config.is_object()) fail("{}: config must be a JSON object", source);
  const std::string type = config.value("model_type", "");
  if (type != "llama" && type != "qwen2" && type != "mistral")
    fail("{}: model_type \"{}\" is not generated (llama, mistral or qwen2)", source, type);
  if (true_field(config, "attention_bias") || true_field(config, "mlp_bias"))
    fail("{}: attention_bias / mlp_bias true is not generated", source);
  const int64_t hidden = positive_field(config, "hidden_size", source);
  const int64_t layers = positive_field(config, "num_hidden_layers", source);
  const int64_t heads = positive_field(config, "num_attention_heads", source);
  const int64_t kv_heads = config.contains("num_key_value_heads")
                               ? positive_field(config, "num_key_value_heads", source)
                               : heads;
  const int64_t head_dim = config.contains("head_dim") && !config.at("head_dim").is_null()
                               ? positive_field(config, "head_dim", source)
                               : hidden / heads;
  const int64_t ffn = positive_field(config, "intermediate_size", source);
  const int64_t vocab = positive_field(config, "vocab_size", source);
  const bool tied = true_field(config, "tie_word_embeddings");
  const bool qkv_bias = type == "qwen2";  // Qwen2 always has q/k/v biases, no o/mlp biases
  const int64_t q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;

  std::vector<TensorSpec> t;
  t.push_back({"model.embed_tokens.weight", DType::BF16, {vocab, hidden}});
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t.push_back({p + "input_layernorm.weight", DType::BF16, {hidden}});
    t.push_back({p + "self_attn.q_proj.weight", DType::BF16, {q_dim, hidden}});
    t.push_back({p + "self_attn.k_proj.weight", DType::BF16, {kv_dim, hidden}});
    t.push_back({p + "self_attn.v_proj.weight", DType::BF16, {kv_dim, hidden}});
    if (qkv_bias) {
      t.push_back({p + "self_attn.q_proj.bias", DType::BF16, {q_dim}});
      t.push_back({p + "self_attn.k_proj.bias", DType::BF16, {kv_dim}});
      t.push_back({p + "self_attn.v_proj.bias", DType::BF16, {kv_dim}});
    }
    t.push_back({p + "self_attn.o_proj.weight", DType::BF16, {hidden, q_dim}});
    t.push_back({p + "post_attention_layernorm.weight", DType::BF16, {hidden}});
    t.push_back({p + "mlp.gate_proj.weight", DType::BF16, {ffn, hidden}});
    t.push_back({p + "mlp.up_proj.weight", DType::BF16, {ffn, hidden}});
    t.push_back({p + "mlp.down_proj.weight", DType::BF16, {hidden, ffn}});
  }
  t.push_back({"model.norm.weight", DType::BF16, {hidden}});
  if (!tied) t.push_back({"lm_head.weight", DType::BF16, {vocab, hidden}});
  return t;
}

void write_random_checkpoint(const fs::path& dir, const json& config,
                             const RandomCheckpointOptions& options,
                             const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<TensorSpec> tensors =
      random_checkpoint_tensors(config, (dir / "config.json").string());
  if (!(options.std > 0) || !std::isfinite(options.std))
    fail("--std must be a positive number, got {}", options.std);
  const fs::path tokenizer = options.tokenizer_dir / "tokenizer.json";
  if (!fs::exists(tokenizer)) fail("{}: no tokenizer.json to copy", options.tokenizer_dir.string());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create: {}", dir.string(), ec.message());

  int64_t total = 0, done = 0;
  for (const TensorSpec& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    total += 2 * n;
  }
  // One buffer of a few blocks per write keeps memory flat for any model size.
  constexpr int64_t kBufferElements = 16 * kBlock;
  std::vector<uint16_t> buffer(kBufferElements);
  write_safetensors_streamed(dir / "model.safetensors", tensors,
                             [&](size_t index, const ByteSink& write) {
                               const TensorSpec& t = tensors[index];
                               int64_t n = 1;
                               for (int64_t d : t.shape) n *= d;
                               const bool norm = t.name.ends_with("norm.weight");
                               for (int64_t start = 0; start < n; start += kBufferElements) {
                                 const int64_t count = std::min(kBufferElements, n - start);
                                 if (norm) {
                                   std::fill_n(buffer.begin(), count, f32_to_bf16(1.0f));
                                 } else {
                                   parallel_for(count, kBlock, [&](int64_t begin, int64_t end) {
                                     fill_gaussian_block(buffer.data() + begin, end - begin,
                                                         options.seed, index,
                                                         (start + begin) / kBlock, options.std);
                                   });
                                 }
                                 write(buffer.data(), size_t(count) * 2);
                                 done += 2 * count;
                                 if (progress) progress(done, total);
                               }
                             },
                             {{"format", "pt"}});

  write_text_atomically(dir / "config.json", config.dump(2) + "\n");
  write_text_atomically(dir / "tokenizer.json", read_text_file(tokenizer));
  const fs::path tokenizer_config = options.tokenizer_dir / "tokenizer_config.json";
  // A tokenizer folder without tokenizer_config.json (smollm2-tokenizer) gets the minimal one
  // transformers needs to load tokenizer.json.
  write_text_atomically(dir / "tokenizer_config.json",
                        fs::exists(tokenizer_config)
                            ? read_text_file(tokenizer_config)
                            : json{{"tokenizer_class", "PreTrainedTokenizerFast"}}.dump(2) + "\n");
}

}  // namespace subbit
