// The families beside plain Llama: Llama-3.x RoPE scaling, Qwen2's q/k/v biases, Mistral. Each is
// checked against the independent fp32 references in ../shared/models/*/golden.json, and each test
// also shows that ignoring the family's feature would have failed it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/export.h"
#include "model/loader.h"
#include "model/model_file.h"
#include "model/perplexity.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::model_dir;

using nlohmann::json;
namespace fs = std::filesystem;

struct FamilyGolden {
  std::vector<int32_t> tokens;
  std::vector<int64_t> positions;
  std::vector<float> logits;  // (positions, vocab)
  float max_abs_logit;
};

FamilyGolden read_golden(const fs::path& dir) {
  const json g = json::parse(std::ifstream(dir / "golden.json"));
  FamilyGolden golden{g["token_ids"].get<std::vector<int32_t>>(),
                      g["positions"].get<std::vector<int64_t>>(),
                      {},
                      g["max_abs_logit"].get<float>()};
  const auto shape = g["shape"].get<std::vector<int64_t>>();
  golden.logits.resize(shape[0] * shape[1]);
  std::ifstream(dir / g["logits_file"].get<std::string>(), std::ios::binary)
      .read(reinterpret_cast<char*>(golden.logits.data()),
            std::streamsize(golden.logits.size() * 4));
  return golden;
}

// Largest |model - golden| over the golden's positions.
float max_deviation(const LlamaModel& model, const FamilyGolden& golden) {
  const int64_t vocab = model.config().vocab_size;
  RunState state(model.config(), int64_t(golden.tokens.size()));
  std::vector<float> logits(golden.tokens.size() * vocab);
  model.forward(golden.tokens, 0, state, logits.data(), /*all_logits=*/true);
  float worst = 0;
  for (size_t i = 0; i < golden.positions.size(); ++i)
    for (int64_t v = 0; v < vocab; ++v)
      worst = std::max(
          worst, std::fabs(logits[golden.positions[i] * vocab + v] - golden.logits[i * vocab + v]));
  return worst;
}

// The same weights (borrowed) under another config, optionally without biases: what the engine
// would compute if it ignored a family feature.
LlamaModel variant(const LlamaModel& model, LlamaConfig config, bool drop_biases) {
  const LlamaWeights& src = model.weights();
  LlamaWeights w;
  w.embedding = src.embedding;
  w.storage = src.storage;
  w.final_norm = src.final_norm;
  w.lm_head = src.lm_head;  // both goldens' models are tied
  for (const LlamaLayer& s : src.layers) {
    LlamaLayer layer;
    layer.norm = s.norm;
    if (!drop_biases) layer.bias = s.bias;
    for (int i = 0; i < kLinearsPerBlock; ++i)
      layer.linear[i] =
          std::make_unique<DenseLinear>(dynamic_cast<const DenseLinear&>(*s.linear[i]).matrix());
    w.layers.push_back(std::move(layer));
  }
  if (drop_biases) config.qkv_bias = config.o_bias = config.mlp_bias = false;
  return LlamaModel(config, std::move(w));
}

class Family : public ::testing::TestWithParam<std::string> {};

TEST_P(Family, LogitsMatchIndependentReference) {
  const fs::path dir = model_dir(GetParam());
  SKIP_UNLESS_EXISTS(dir / "golden.json");
  const FamilyGolden golden = read_golden(dir);
  ModelBundle bundle = load_model(dir);
  const float deviation = max_deviation(*bundle.model, golden);
  std::printf("%s: max |logit - golden| = %.3g (max |logit| %.3g)\n", GetParam().c_str(), deviation,
              golden.max_abs_logit);
  EXPECT_LT(deviation, 1e-3f * golden.max_abs_logit);
}

TEST_P(Family, IgnoringTheFamilyFeatureFailsTheReference) {
  const fs::path dir = model_dir(GetParam());
  SKIP_UNLESS_EXISTS(dir / "golden.json");
  const FamilyGolden golden = read_golden(dir);
  ModelBundle bundle = load_model(dir);
  LlamaConfig plain = bundle.model->config();
  const bool has_biases = plain.qkv_bias;
  plain.rope_scaling = RopeScaling{};
  const LlamaModel ignored = variant(*bundle.model, plain, /*drop_biases=*/true);
  EXPECT_TRUE(has_biases || bundle.model->config().rope_scaling.kind != RopeScaling::Kind::None);
  EXPECT_GT(max_deviation(ignored, golden), 1e-2f * golden.max_abs_logit);
}

TEST_P(Family, ModelFileAndExportKeepTheFamily) {
  const fs::path dir = model_dir(GetParam());
  SKIP_UNLESS_EXISTS(dir / "golden.json");
  const FamilyGolden golden = read_golden(dir);
  ModelBundle bundle = load_model(dir);
  const float direct = max_deviation(*bundle.model, golden);
  const fs::path tmp = testing::temp_dir("family");
  save_model_file(tmp / "m.gguf", bundle.model->config(), bundle.tokenizer_json,
                  bundle.model->weights(), {GetParam(), "none", "{}", ""});
  ModelBundle from_file = load_model(tmp / "m.gguf");
  EXPECT_EQ(llama_config_to_json(from_file.model->config()),
            llama_config_to_json(bundle.model->config()));
  EXPECT_EQ(max_deviation(*from_file.model, golden), direct);  // biases and norms stored as f32
  export_hf_checkpoint(from_file, tmp / "hf");
  ModelBundle exported = load_model(tmp / "hf");
  EXPECT_EQ(exported.model->config().model_type, bundle.model->config().model_type);
  EXPECT_EQ(max_deviation(*exported.model, golden), direct);  // bf16 weights round-trip exactly
  fs::remove_all(tmp);
}

INSTANTIATE_TEST_SUITE_P(Models, Family, ::testing::Values("sb-8m-llama3", "sb-8m-qwen2"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A checkpoint folder with sb-8m's weights and tokenizer under a rewritten config.json.
fs::path with_config(const std::string& tag, const std::function<void(json&)>& edit) {
  const fs::path src = model_dir("sb-8m");
  const fs::path dir = testing::temp_dir(tag);
  json config = json::parse(std::ifstream(src / "config.json"));
  edit(config);
  std::ofstream(dir / "config.json") << config.dump();
  fs::create_symlink(src / "model.safetensors", dir / "model.safetensors");
  fs::create_symlink(src / "tokenizer.json", dir / "tokenizer.json");
  return dir;
}

TEST(Mistral, IsLlamaWithinItsWindow) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = with_config("mistral", [](json& c) {
    c["model_type"] = "mistral";
    c["architectures"] = {"MistralForCausalLM"};
    c["sliding_window"] = 256;
  });
  ModelBundle llama = load_model(model_dir("sb-8m"));
  ModelBundle mistral = load_model(dir);
  EXPECT_EQ(mistral.model->config().sliding_window, 256);
  std::vector<int32_t> tokens(200);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7919) % 8000);
  const int64_t vocab = llama.model->config().vocab_size;
  std::vector<float> a(vocab), b(vocab);
  RunState sa(llama.model->config(), 200), sb(mistral.model->config(), 200);
  llama.model->forward(tokens, 0, sa, a.data(), false);
  mistral.model->forward(tokens, 0, sb, b.data(), false);
  EXPECT_EQ(a, b);
  // Beyond the window full attention would differ from Mistral's: refused, naming the limit.
  std::vector<int32_t> long_text(4096, 5);
  try {
    evaluate_perplexity(*mistral.model, long_text, 512, 1);
    FAIL() << "a context beyond the sliding window was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Families, BiasTensorsMustMatchTheConfig) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  // sb-8m-qwen2 style config over sb-8m's weights: the q/k/v biases are missing.
  const fs::path dir = with_config("nobias", [](json& c) {
    c["model_type"] = "qwen2";
    c["architectures"] = {"Qwen2ForCausalLM"};
  });
  try {
    load_model(dir);
    FAIL() << "a Qwen2 checkpoint without biases loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj.bias is missing"),
              std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

TEST(Families, WrongBiasShapeOrUndeclaredBiasIsRefused) {
  const fs::path dir = testing::temp_dir("badbias");
  json config = {{"architectures", {"Qwen2ForCausalLM"}},
                 {"model_type", "qwen2"},
                 {"hidden_size", 8},
                 {"num_hidden_layers", 1},
                 {"num_attention_heads", 2},
                 {"num_key_value_heads", 1},
                 {"intermediate_size", 16},
                 {"vocab_size", 4},
                 {"max_position_embeddings", 16},
                 {"tie_word_embeddings", true}};
  const std::string tokenizer = R"({"version": "1.0", "added_tokens": [], "normalizer": null,
    "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})";
  std::ofstream(dir / "tokenizer.json") << tokenizer;
  auto tensor = [](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return TensorToWrite{name, DType::F32, shape, std::vector<uint8_t>(n * 4, 0)};
  };
  auto write = [&](int64_t q_bias_size, bool o_bias) {
    std::vector<TensorToWrite> t = {tensor("model.embed_tokens.weight", {4, 8}),
                                    tensor("model.norm.weight", {8})};
    const std::string p = "model.layers.0.";
    for (const char* n : {"input_layernorm", "post_attention_layernorm"})
      t.push_back(tensor(p + n + ".weight", {8}));
    t.push_back(tensor(p + "self_attn.q_proj.weight", {8, 8}));
    t.push_back(tensor(p + "self_attn.q_proj.bias", {q_bias_size}));
    t.push_back(tensor(p + "self_attn.k_proj.weight", {4, 8}));
    t.push_back(tensor(p + "self_attn.k_proj.bias", {4}));
    t.push_back(tensor(p + "self_attn.v_proj.weight", {4, 8}));
    t.push_back(tensor(p + "self_attn.v_proj.bias", {4}));
    t.push_back(tensor(p + "self_attn.o_proj.weight", {8, 8}));
    if (o_bias) t.push_back(tensor(p + "self_attn.o_proj.bias", {8}));
    t.push_back(tensor(p + "mlp.gate_proj.weight", {16, 8}));
    t.push_back(tensor(p + "mlp.up_proj.weight", {16, 8}));
    t.push_back(tensor(p + "mlp.down_proj.weight", {8, 16}));
    write_safetensors(dir / "model.safetensors", t);
  };
  std::ofstream(dir / "config.json") << config.dump();
  write(8, false);
  EXPECT_NO_THROW(load_model(dir));
  auto expect_error = [&](const std::string& fragment) {
    try {
      load_model(dir);
      FAIL() << "accepted: " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(dir.string()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  write(7, false);
  expect_error("q_proj.bias has shape [7], expected [8]");
  write(8, true);
  expect_error("o_proj.bias is present but config.json declares no such bias");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
