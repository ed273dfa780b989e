#pragma once
// Random-weight Hugging Face checkpoints with the exact config of a named model, so time and
// memory at real sizes can be measured without downloads. Weights are i.i.d. Gaussian: their
// singular values follow the Marchenko-Pastur law, a flat spectrum with no dominant directions,
// which is the worst case for truncated SVD (LittleBit's Dual-SVID) and unlike trained weights.
// Speed and memory measured on them are real; accuracy is not.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace subbit {

// Names accepted by random_checkpoint_preset, e.g. "llama-3.2-1b".
std::vector<std::string> random_checkpoint_preset_names();
// The model's config.json as published (architecture fields exact; torch_dtype bfloat16).
nlohmann::json random_checkpoint_preset(const std::string& name);

// Every tensor the checkpoint holds, in file order, with Hugging Face names and bf16 shapes:
// embeddings, per layer the norms, the seven projections (and q/k/v biases for qwen2), the
// final norm and, when untied, lm_head. Fails naming `source` for configs it cannot describe.
std::vector<TensorSpec> random_checkpoint_tensors(const nlohmann::json& config,
                                                  const std::string& source);

struct RandomCheckpointOptions {
  double std = 0.02;  // weights and biases ~ N(0, std^2); norm weights are 1
  uint64_t seed = 0;
  std::filesystem::path tokenizer_dir;  // tokenizer.json (+ tokenizer_config.json) copied from here
};

// Writes config.json, model.safetensors (streamed: memory stays at a few buffers, whatever the
// size), tokenizer.json and tokenizer_config.json into `dir` (created if absent). The same
// config, std and seed give a byte-identical model.safetensors for any thread count.
// progress(bytes_done, bytes_total) follows the safetensors write.
void write_random_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                             const RandomCheckpointOptions& options,
                             const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace subbit
