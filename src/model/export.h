#pragma once
#include <filesystem>

#include "model/loader.h"

namespace subbit {

// Writes the model as a Hugging Face checkpoint (config.json, bf16 model.safetensors,
// tokenizer.json) holding exactly the weights the model computes with (dequantized), so other
// tools can evaluate it. Refuses a non-empty output folder; the folder appears only complete.
void export_hf_checkpoint(const ModelBundle& bundle, const std::filesystem::path& out_dir);

}  // namespace subbit
