#include "model/export.h"

#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/tensors.h"

namespace subbit {

namespace {

TensorToWrite bf16_tensor(std::string name, const std::vector<float>& values,
                          std::vector<int64_t> shape) {
  TensorToWrite t{std::move(name), DType::BF16, std::move(shape),
                  std::vector<uint8_t>(values.size() * 2)};
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = f32_to_bf16(values[i]);
    std::memcpy(t.bytes.data() + 2 * i, &h, 2);
  }
  return t;
}

TensorToWrite linear_tensor(std::string name, const Linear& linear) {
  std::vector<float> w(linear.n_out() * linear.n_in());
  linear.dequantize(w.data());
  return bf16_tensor(std::move(name), w, {linear.n_out(), linear.n_in()});
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.flush()) fail("{}: write failed", path.string());
}

}  // namespace

void export_hf_checkpoint(const ModelBundle& bundle, const std::filesystem::path& out_dir) {
  namespace fs = std::filesystem;
  if (fs::exists(out_dir) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
    fail("{}: already exists and is not an empty folder", out_dir.string());
  const LlamaWeights& w = bundle.model->weights();
  // A tied model whose head was compressed in another format than its embedding has two
  // different matrices: the checkpoint unties them so that both are kept.
  LlamaConfig c = bundle.model->config();
  c.tie_word_embeddings = w.head_is_embedding();
  const fs::path tmp = out_dir.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    std::vector<TensorToWrite> tensors;
    tensors.push_back(linear_tensor(std::string(kEmbedding.hf_name), *w.embedding));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const LlamaLayer& layer = w.layers[l];
      for (int i = 0; i < kNormsPerBlock; ++i)
        tensors.push_back(bf16_tensor(hf_block_tensor(l, kBlockNorms[i].hf_name, "weight"),
                                      layer.norm[i], {c.hidden_size}));
      for (int i = 0; i < kLinearsPerBlock; ++i) {
        tensors.push_back(linear_tensor(hf_block_tensor(l, kBlockLinears[i].hf_name, "weight"),
                                        *layer.linear[i]));
        const std::vector<float>& bias = layer.bias[i];
        if (!bias.empty())
          tensors.push_back(bf16_tensor(hf_block_tensor(l, kBlockLinears[i].hf_name, "bias"), bias,
                                        {int64_t(bias.size())}));
      }
    }
    tensors.push_back(bf16_tensor(std::string(kFinalNorm.hf_name), w.final_norm, {c.hidden_size}));
    if (!c.tie_word_embeddings)
      tensors.push_back(linear_tensor(std::string(kLmHead.hf_name), *w.lm_head));
    write_safetensors(tmp / "model.safetensors", tensors, {{"format", "pt"}});
    write_text(tmp / "config.json", llama_config_to_json(c).dump(2) + "\n");
    write_text(tmp / "tokenizer.json", bundle.tokenizer_json);
    if (fs::exists(out_dir)) fs::remove(out_dir);  // the empty folder checked above
    fs::rename(tmp, out_dir);
  } catch (...) {
    fs::remove_all(tmp);
    throw;
  }
}

}  // namespace subbit
