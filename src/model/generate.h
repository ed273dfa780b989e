#pragma once
// Autoregressive generation: greedy when temperature is 0, else temperature + top-k + nucleus
// sampling.
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "model/llama.h"

namespace subbit {

struct SamplingParams {
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int64_t top_k = 0;  // keep only the k most likely tokens; 0 keeps all
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prompt_seconds = 0;
  double generation_seconds = 0;
};

// Generates up to max_new_tokens after `prompt`, stopping after `stop_token` if given.
// on_token(id) is called for every new token as soon as it is chosen. Returns the new tokens.
std::vector<int32_t> generate(const LlamaModel& model, std::span<const int32_t> prompt,
                              int64_t max_new_tokens, SamplingParams params,
                              std::optional<int32_t> stop_token,
                              const std::function<void(int32_t)>& on_token,
                              GenerationStats* stats = nullptr);

}  // namespace subbit
