// The libtorch Llama graph that QAT trains (compress/torch_llama) against the inference runtime
// (model/llama) and the golden logits of each model directory, so RoPE, grouped-query attention,
// norms or biases cannot differ between training and inference unnoticed.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "compress/torch_llama.h"
#include "model/loader.h"
#include "test_support.h"

namespace subbit {
namespace {

using nlohmann::json;
using namespace subbit::compress;

// A golden.json's logits: the sb models and stories260K hold every position of a 32-token text
// (golden_logits), the family parity models (sb-8m-llama3, sb-8m-qwen2) 80 positions of a
// 640-token sequence (token_ids, positions, logits_file).
struct GoldenLogits {
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::vector<float> logits;  // (positions, vocab)
};

GoldenLogits read_golden_logits(const std::filesystem::path& dir, int64_t vocab) {
  const json g = json::parse(std::ifstream(dir / "golden.json"));
  GoldenLogits out;
  std::string file;
  if (g.contains("golden_logits")) {
    out.ids = g["golden_logits"]["token_ids"].get<std::vector<int32_t>>();
    for (size_t p = 0; p < out.ids.size(); ++p) out.positions.push_back(int64_t(p));
    file = g["golden_logits"]["file"].get<std::string>();
  } else {
    out.ids = g["token_ids"].get<std::vector<int32_t>>();
    out.positions = g["positions"].get<std::vector<int64_t>>();
    file = g["logits_file"].get<std::string>();
  }
  out.logits.resize(out.positions.size() * vocab);
  std::ifstream(dir / file, std::ios::binary)
      .read(reinterpret_cast<char*>(out.logits.data()),
            std::streamsize(out.logits.size() * sizeof(float)));
  return out;
}

class TrainingGraph : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainingGraph, LogitsMatchTheRuntimeAndTheGoldenReference) {
  const auto dir = testing::shared_dir() / "models" / GetParam();
  SKIP_UNLESS_EXISTS(dir / "golden.json");
  ModelBundle bundle = load_model(dir);
  const LlamaConfig& config = bundle.model->config();
  const int64_t vocab = config.vocab_size;
  const GoldenLogits golden = read_golden_logits(dir, vocab);
  const int64_t n = int64_t(golden.ids.size());

  TorchLlama graph(*bundle.model);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor tokens =
        torch::tensor(std::vector<int64_t>(golden.ids.begin(), golden.ids.end())).view({1, n});
    logits = graph.forward(tokens).logits[0].contiguous();
  }
  ASSERT_EQ(logits.size(0), n);
  ASSERT_EQ(logits.size(1), vocab);
  const float* trained = logits.data_ptr<float>();

  RunState cache(config, n);
  std::vector<float> runtime(n * vocab);
  bundle.model->forward(golden.ids, 0, cache, runtime.data(), true);

  float max_logit = 0, vs_runtime = 0, vs_golden = 0;
  for (int64_t i = 0; i < n * vocab; ++i) {
    max_logit = std::max(max_logit, std::fabs(runtime[i]));
    vs_runtime = std::max(vs_runtime, std::fabs(trained[i] - runtime[i]));
  }
  for (size_t p = 0; p < golden.positions.size(); ++p)
    for (int64_t v = 0; v < vocab; ++v)
      vs_golden = std::max(vs_golden, std::fabs(trained[golden.positions[p] * vocab + v] -
                                                golden.logits[p * vocab + v]));
  std::cout << GetParam() << ": max |logit| " << max_logit << ", training graph vs runtime "
            << vs_runtime << " (" << vs_runtime / max_logit << " of max), vs golden " << vs_golden
            << " (" << vs_golden / max_logit << " of max)\n";
  // Both are fp32 passes that sum in different orders (measured: up to ~1e-6 of max |logit|);
  // a wrong RoPE, GQA mapping, norm or bias moves logits by a large fraction of max |logit|.
  EXPECT_LT(vs_runtime, 2e-5f * max_logit);
  EXPECT_LT(vs_golden, 2e-5f * max_logit);
}

// One line per model directory the runtime loads. sb-8m-llama3 (Llama-3 RoPE scaling) and
// sb-8m-qwen2 (q/k/v biases) join once the runtime and the training graph support them.
INSTANTIATE_TEST_SUITE_P(Models, TrainingGraph,
                         ::testing::Values("sb-8m", "sb-30m", "stories260K", "sb-8m-llama3",
                                           "sb-8m-qwen2"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A frozen BF16 weight (the teacher of a BF16 checkpoint) is kept in BF16 and multiplied in fp32:
// the product and the input's gradient are those of its fp32 copy, bit for bit.
TEST(FrozenDense, KeepsBf16WeightsAndMultipliesThemInFp32) {
  torch::manual_seed(7);
  const torch::Tensor w = torch::randn({37, 53}).to(torch::kBFloat16);  // (n_out, n_in)
  FrozenDense kept(w), widened(w.to(torch::kFloat32));
  EXPECT_EQ(kept.stored().scalar_type(), torch::kBFloat16);
  const torch::Tensor x = torch::randn({3, 5, 53});
  const torch::Tensor x1 = x.clone().requires_grad_(true), x2 = x.clone().requires_grad_(true);
  const torch::Tensor y1 = kept.forward(x1), y2 = widened.forward(x2);
  EXPECT_EQ(y1.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(y1, y2));
  const torch::Tensor grad = torch::randn({3, 5, 37});
  y1.backward(grad);
  y2.backward(grad);
  EXPECT_TRUE(torch::equal(x1.grad(), x2.grad()));
  const torch::Tensor index = torch::tensor({4, 0, 36});
  EXPECT_TRUE(torch::equal(kept.rows(index), widened.rows(index)));
}

TEST(TrainingGraph, KeepsABf16CheckpointInBf16) {
  const auto dir = testing::shared_dir() / "models" / "sb-8m";
  SKIP_UNLESS_EXISTS(dir / "model.safetensors");
  ModelBundle bundle = load_model(dir);
  TorchLlama graph(*bundle.model);
  for (int i = 0; i < kLinearsPerBlock; ++i)
    EXPECT_EQ(std::dynamic_pointer_cast<FrozenDense>(graph.linear(0, i))->stored().scalar_type(),
              torch::kBFloat16);
  EXPECT_EQ(std::dynamic_pointer_cast<FrozenDense>(graph.head())->stored().scalar_type(),
            torch::kBFloat16);
}

}  // namespace
}  // namespace subbit
