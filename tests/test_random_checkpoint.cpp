// `subbit random-model`: the named configs (checked through their published parameter counts),
// the streamed bf16 safetensors, determinism across thread counts, and loading the result.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/random_checkpoint.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::error_of;
using testing::expect_contains;

namespace fs = std::filesystem;
using nlohmann::json;
using testing::run_command;

int64_t parameter_count(const std::vector<TensorSpec>& tensors) {
  int64_t n = 0;
  for (const TensorSpec& t : tensors) {
    int64_t size = 1;
    for (int64_t d : t.shape) size *= d;
    n += size;
  }
  return n;
}

const TensorSpec* find(const std::vector<TensorSpec>& tensors, const std::string& name) {
  for (const TensorSpec& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

TEST(RandomCheckpoint, PresetsHaveThePublishedParameterCounts) {
  const std::pair<const char*, int64_t> expected[] = {{"llama-3.2-1b", 1'235'814'400},
                                                      {"llama-3.2-3b", 3'212'749'824},
                                                      {"llama-2-7b", 6'738'415'616},
                                                      {"llama-3.1-8b", 8'030'261'248},
                                                      {"qwen2.5-1.5b", 1'543'714'304}};
  for (const auto& [name, params] : expected)
    EXPECT_EQ(parameter_count(random_checkpoint_tensors(random_checkpoint_preset(name), name)),
              params)
        << name;
}

TEST(RandomCheckpoint, PresetConfigsAndShapes) {
  const json llama1b = random_checkpoint_preset("llama-3.2-1b");
  EXPECT_EQ(llama1b["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(llama1b["rope_scaling"]["factor"], 32.0);
  EXPECT_EQ(llama1b["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(llama1b["rope_theta"], 500000.0);
  EXPECT_EQ(llama1b["max_position_embeddings"], 131072);
  EXPECT_EQ(llama1b["tie_word_embeddings"], true);
  const auto t1b = random_checkpoint_tensors(llama1b, "1b");
  EXPECT_EQ(find(t1b, "lm_head.weight"), nullptr);  // tied
  ASSERT_NE(find(t1b, "model.layers.15.self_attn.k_proj.weight"), nullptr);
  EXPECT_EQ(find(t1b, "model.layers.15.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{512, 2048}));
  EXPECT_EQ(find(t1b, "model.embed_tokens.weight")->shape, (std::vector<int64_t>{128256, 2048}));

  EXPECT_EQ(random_checkpoint_preset("llama-3.1-8b")["rope_scaling"]["factor"], 8.0);
  EXPECT_TRUE(random_checkpoint_preset("llama-2-7b")["rope_scaling"].is_null());
  const auto t8b = random_checkpoint_tensors(random_checkpoint_preset("llama-3.1-8b"), "8b");
  ASSERT_NE(find(t8b, "lm_head.weight"), nullptr);
  EXPECT_EQ(find(t8b, "model.layers.0.mlp.down_proj.weight")->shape,
            (std::vector<int64_t>{4096, 14336}));

  const json qwen = random_checkpoint_preset("qwen2.5-1.5b");
  EXPECT_EQ(qwen["model_type"], "qwen2");
  EXPECT_EQ(qwen["use_sliding_window"], false);
  const auto tq = random_checkpoint_tensors(qwen, "qwen");
  ASSERT_NE(find(tq, "model.layers.27.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ(find(tq, "model.layers.27.self_attn.q_proj.bias")->shape, (std::vector<int64_t>{1536}));
  EXPECT_EQ(find(tq, "model.layers.27.self_attn.v_proj.bias")->shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(find(tq, "model.layers.0.self_attn.o_proj.bias"), nullptr);
}

TEST(RandomCheckpoint, BadNamesAndConfigsRejected) {
  const std::string message = error_of([] { random_checkpoint_preset("llama-9"); });
  expect_contains(message, {"llama-9", "llama-3.2-1b"});
  json config = random_checkpoint_preset("llama-3.2-1b");
  config.erase("hidden_size");
  expect_contains(error_of([&] { random_checkpoint_tensors(config, "my.json"); }),
                  {"my.json", "hidden_size"});
  config = random_checkpoint_preset("llama-3.2-1b");
  config["model_type"] = "gpt2";
  expect_contains(error_of([&] { random_checkpoint_tensors(config, "my.json"); }),
                  {"my.json", "gpt2"});
}

// A tiny Llama whose vocabulary exceeds the SmolLM2 tokenizer's 49152 entries.
json tiny_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", 64},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"intermediate_size", 96},
          {"vocab_size", 49216},
          {"max_position_embeddings", 8192},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"}};
}

fs::path tokenizer_dir() { return testing::shared_dir() / "models" / "smollm2-tokenizer"; }

TEST(RandomCheckpoint, TinyCheckpointIsGaussianDeterministicAndLoads) {
  SKIP_UNLESS_EXISTS(tokenizer_dir() / "tokenizer.json");
  const fs::path dir = testing::temp_dir("random-model");
  std::ofstream(dir / "tiny.json") << tiny_config().dump();
  const std::string cli = testing::cli_path().string();
  for (const char* threads : {"1", "2"}) {
    const auto r =
        run_command(cli + " random-model --config " + (dir / "tiny.json").string() + " -o " +
                    (dir / fmt::format("t{}", threads)).string() + " --tokenizer " +
                    tokenizer_dir().string() + " --seed 7 -t " + threads);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const auto read = testing::file_bytes;
  EXPECT_EQ(read(dir / "t1" / "model.safetensors"), read(dir / "t2" / "model.safetensors"));
  EXPECT_EQ(read(dir / "t1" / "tokenizer.json"), read(tokenizer_dir() / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir / "t1" / "tokenizer_config.json"));
  EXPECT_EQ(json::parse(read(dir / "t1" / "config.json")), tiny_config());

  const auto archive = SafetensorsArchive::open_model_dir(dir / "t1");
  const auto expected = random_checkpoint_tensors(tiny_config(), "tiny");
  ASSERT_EQ(archive.tensors().size(), expected.size());
  for (const TensorSpec& spec : expected) {
    const TensorView& t = archive.get(spec.name);
    EXPECT_EQ(t.dtype, DType::BF16) << spec.name;
    EXPECT_EQ(t.shape, spec.shape) << spec.name;
    const auto* values = reinterpret_cast<const uint16_t*>(t.data);
    double sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double v = bf16_to_f32(values[i]);
      sum += v;
      sum_sq += v * v;
    }
    const double mean = sum / double(t.numel()),
                 std = std::sqrt(sum_sq / double(t.numel()) - mean * mean);
    if (spec.name.ends_with("norm.weight")) {
      EXPECT_EQ(mean, 1.0) << spec.name;
      EXPECT_EQ(std, 0.0) << spec.name;
    } else {
      // >= 2048 samples per tensor: both bounds are over 3 standard errors wide (fixed seed).
      EXPECT_NEAR(mean, 0.0, 0.002) << spec.name;
      EXPECT_NEAR(std, 0.02, 0.001) << spec.name;
    }
  }
  const auto info = run_command(cli + " info " + (dir / "t1").string());
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("vocab 49216"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("49152 tokens"), std::string::npos) << info.out;
  fs::remove_all(dir);
}

TEST(RandomCheckpoint, FailedRunLeavesNoModelFile) {
  const fs::path dir = testing::temp_dir("random-model-bad");
  std::ofstream(dir / "tiny.json") << tiny_config().dump();
  const auto r = run_command(testing::cli_path().string() + " random-model --config " +
                             (dir / "tiny.json").string() + " -o " + (dir / "out").string() +
                             " --tokenizer " + (dir / "no-tokenizer").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no-tokenizer"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
