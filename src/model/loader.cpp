#include "model/loader.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "io/text_file.h"
#include "model/model_file.h"
#include "model/tensors.h"

namespace subbit {

namespace {

std::string tensor_kind(const std::string& name) {
  if (name == kEmbedding.hf_name) return "embedding";
  if (name == kLmHead.hf_name) return "lm_head";
  if (name.find("norm") != std::string::npos) return "norm";
  for (const BlockLinearSpec& spec : kBlockLinears)
    if (name.find(spec.hf_name) != std::string::npos) return std::string(spec.kind);
  return "other";
}

const TensorView& expect(const SafetensorsArchive& archive, const std::filesystem::path& dir,
                         const std::string& name, std::vector<int64_t> shape) {
  const TensorView* t = archive.find(name);
  if (t == nullptr) fail("{}: tensor {} is missing", dir.string(), name);
  if (t->shape != shape)
    fail("{}: tensor {} has shape [{}], expected [{}]", dir.string(), name,
         fmt::join(t->shape, ","), fmt::join(shape, ","));
  return *t;
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(t.numel());
  DenseMatrix m{t.dtype, t.data, 1, t.numel()};
  dense_row_to_f32(m, 0, out.data());
  return out;
}

}  // namespace

std::string read_hf_chat_template(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return "";
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
  if (!config.is_object() || !config.contains("chat_template") || config["chat_template"].is_null())
    return "";
  const nlohmann::json& t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const auto& named : t)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string())
        return named["template"].get<std::string>();
  }
  fail(
      "{}: chat_template must be a string or a list with a {{\"name\": \"default\", \"template\": "
      "...}} entry",
      path.string());
}

ModelBundle load_hf_model(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) fail("{}: not a model directory", dir.string());
  const auto config_path = dir / "config.json";
  if (!std::filesystem::exists(config_path)) fail("{}: no config.json", dir.string());
  const LlamaConfig c = load_llama_config(config_path);
  const auto tokenizer_path = dir / "tokenizer.json";
  if (!std::filesystem::exists(tokenizer_path))
    fail("{}: no tokenizer.json (a Hugging Face fast tokenizer is required)", dir.string());

  auto archive = std::make_shared<SafetensorsArchive>(SafetensorsArchive::open_model_dir(dir));
  ModelBundle bundle;
  bundle.path = dir;
  bundle.container = "huggingface";
  bundle.tokenizer_json = read_text_file(tokenizer_path);
  bundle.chat_template = read_hf_chat_template(dir / "tokenizer_config.json");
  bundle.tokenizer = std::make_unique<Tokenizer>(
      Tokenizer::from_json_text(bundle.tokenizer_json, tokenizer_path.string()));
  if (bundle.tokenizer->vocab_size() > c.vocab_size)
    fail("{}: tokenizer has {} tokens but the model's vocab_size is {}", dir.string(),
         bundle.tokenizer->vocab_size(), c.vocab_size);

  LlamaWeights w;
  const auto& embed =
      expect(*archive, dir, std::string(kEmbedding.hf_name), {c.vocab_size, c.hidden_size});
  w.embedding = DenseLinear::from_stored(embed.dtype, embed.data, c.vocab_size, c.hidden_size);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LlamaLayer layer;
    for (int i = 0; i < kNormsPerBlock; ++i)
      layer.norm[i] = to_f32(expect(
          *archive, dir, hf_block_tensor(l, kBlockNorms[i].hf_name, "weight"), {c.hidden_size}));
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const auto [rows, cols] = linear_shape(c, i);
      const auto& t = expect(*archive, dir, hf_block_tensor(l, kBlockLinears[i].hf_name, "weight"),
                             {rows, cols});
      layer.linear[i] = DenseLinear::from_stored(t.dtype, t.data, rows, cols);
      const std::string bias_name = hf_block_tensor(l, kBlockLinears[i].hf_name, "bias");
      if (linear_has_bias(c, i))
        layer.bias[i] = to_f32(expect(*archive, dir, bias_name, {rows}));
      else if (archive->find(bias_name) != nullptr)
        fail("{}: tensor {} is present but config.json declares no such bias", dir.string(),
             bias_name);
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = to_f32(expect(*archive, dir, std::string(kFinalNorm.hf_name), {c.hidden_size}));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embedding;
  } else {
    const auto& head =
        expect(*archive, dir, std::string(kLmHead.hf_name), {c.vocab_size, c.hidden_size});
    w.lm_head = DenseLinear::from_stored(head.dtype, head.data, c.vocab_size, c.hidden_size);
  }
  w.storage.emplace_back(archive);

  for (const auto& [name, t] : archive->tensors())
    bundle.inventory.push_back({name, tensor_kind(name), std::string(dtype_name(t.dtype)),
                                t.numel(), int64_t(t.nbytes), ""});
  bundle.model = std::make_unique<LlamaModel>(c, std::move(w));
  return bundle;
}

ModelBundle load_model(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) fail("{}: no such file or directory", path.string());
  if (std::filesystem::is_directory(path)) return load_hf_model(path);
  return load_model_file(path);
}

}  // namespace subbit
