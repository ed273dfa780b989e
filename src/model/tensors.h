#pragma once
// Every tensor of a Llama-family model, declared once: its Hugging Face name, its name in subbit
// model files, its kind and its shape from the config. The HF loader, the model-file reader and
// writer, export, calibration and the libtorch training graph all walk these tables.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "model/config.h"

namespace subbit {

// Index of a block's linear layer in LlamaLayer::linear (also the training and file order).
enum LinearIndex : int { kQ, kK, kV, kO, kGate, kUp, kDown, kLinearsPerBlock };

struct BlockLinearSpec {
  std::string_view hf_name;    // model.layers.L.<hf_name>.{weight,bias}
  std::string_view file_name;  // blk.L.<file_name>.* (docs/format.md)
  std::string_view kind;       // "attention" or "mlp", as `subbit info` groups tensors
};
inline constexpr std::array<BlockLinearSpec, kLinearsPerBlock> kBlockLinears = {{
    {"self_attn.q_proj", "attn_q", "attention"},
    {"self_attn.k_proj", "attn_k", "attention"},
    {"self_attn.v_proj", "attn_v", "attention"},
    {"self_attn.o_proj", "attn_output", "attention"},
    {"mlp.gate_proj", "ffn_gate", "mlp"},
    {"mlp.up_proj", "ffn_up", "mlp"},
    {"mlp.down_proj", "ffn_down", "mlp"},
}};

// Index of a block's RMSNorm weight in LlamaLayer::norm.
enum NormIndex : int { kAttnNorm, kMlpNorm, kNormsPerBlock };

struct BlockNormSpec {
  std::string_view hf_name;    // model.layers.L.<hf_name>.weight
  std::string_view file_name;  // blk.L.<file_name>.weight
};
inline constexpr std::array<BlockNormSpec, kNormsPerBlock> kBlockNorms = {{
    {"input_layernorm", "attn_norm"},
    {"post_attention_layernorm", "ffn_norm"},
}};

// The tensors outside the blocks.
struct ModelTensorSpec {
  std::string_view hf_name;
  std::string_view file_name;
};
// The embedding and the LM head are stored as linear layers: file names are format prefixes.
inline constexpr ModelTensorSpec kEmbedding = {"model.embed_tokens.weight", "token_embd"};
inline constexpr ModelTensorSpec kFinalNorm = {"model.norm.weight", "output_norm.weight"};
inline constexpr ModelTensorSpec kLmHead = {"lm_head.weight", "output"};

// (n_out, n_in) of linear `index` under `config`.
std::pair<int64_t, int64_t> linear_shape(const LlamaConfig& config, int index);
bool linear_has_bias(const LlamaConfig& config, int index);

// "model.layers.3.self_attn.q_proj.weight" and friends.
std::string hf_block_tensor(int64_t layer, std::string_view hf_name, std::string_view suffix);
// "blk.3.attn_q": the prefix under which a linear layer's format stores its tensors.
std::string file_block_tensor(int64_t layer, std::string_view file_name);

}  // namespace subbit
