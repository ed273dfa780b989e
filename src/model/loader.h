#pragma once
// Opens a model for inference from a Hugging Face directory (config.json, safetensors,
// tokenizer.json) or a subbit model file.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace subbit {

// One stored tensor as `subbit info` reports it.
struct StoredTensor {
  std::string name;
  std::string kind;  // embedding, attention, mlp, norm, lm_head
  std::string type;  // BF16, F32, littlebit, ...
  int64_t params;
  int64_t bytes;
  std::string detail;  // format-specific (rank, table size, ...)
};

struct ModelBundle {
  std::filesystem::path path;
  std::string container;  // "huggingface" or "subbit"
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string tokenizer_json;    // the tokenizer.json text, for embedding and export
  std::string compression_json;  // subbit files: how the model was compressed (JSON)
  std::string chat_template;     // Jinja chat template; empty when the model has none
  std::vector<StoredTensor> inventory;
};

ModelBundle load_model(const std::filesystem::path& path);
ModelBundle load_hf_model(const std::filesystem::path& dir);
// The chat_template of a Hugging Face tokenizer_config.json ("" when absent; for a list of named
// templates, the one named "default"). Throws Error naming the file when it is malformed.
std::string read_hf_chat_template(const std::filesystem::path& tokenizer_config_json);

}  // namespace subbit
