#pragma once
// subbit model files: one GGUF container holding the config, the tokenizer, and every tensor in
// its own weight format (docs/format.md).
#include <filesystem>
#include <map>
#include <string>

#include "model/loader.h"

namespace subbit {

constexpr int64_t kModelFileVersion = 1;

struct ModelFileInfo {
  std::string name;              // general.name: the source model's name
  std::string method;            // littlebit, sketch, sign, rtn, none
  std::string compression_json;  // free-form details: target bpw, training summary, ...
  std::string chat_template;     // stored as tokenizer.chat_template when not empty
};

// Writes atomically; tokenizer_json is the tokenizer.json text to embed.
void save_model_file(const std::filesystem::path& file, const LlamaConfig& config,
                     const std::string& tokenizer_json, const LlamaWeights& weights,
                     const ModelFileInfo& info);

ModelBundle load_model_file(const std::filesystem::path& file);

}  // namespace subbit
