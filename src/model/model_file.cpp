#include "model/model_file.h"

#include <fmt/format.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "formats/format_table.h"
#include "formats/tensor_io.h"
#include "io/gguf.h"
#include "model/tensors.h"

namespace subbit {

namespace {

void put_f32(GgufWriter& out, const std::string& name, const std::vector<float>& v) {
  std::vector<uint8_t> bytes(v.size() * 4);
  std::memcpy(bytes.data(), v.data(), bytes.size());
  out.add_tensor(name, GgmlType::F32, {int64_t(v.size())}, std::move(bytes));
}

std::vector<float> get_f32(const GgufFile& file, const std::string& name, int64_t n) {
  const GgufTensor& t = expect_tensor(file, name, GgmlType::F32, {n});
  std::vector<float> v(n);
  std::memcpy(v.data(), t.data, n * 4);
  return v;
}

}  // namespace

void save_model_file(const std::filesystem::path& file, const LlamaConfig& c,
                     const std::string& tokenizer_json, const LlamaWeights& w,
                     const ModelFileInfo& info) {
  GgufWriter out;
  out.set("general.architecture", std::string("subbit"));
  out.set("general.name", info.name);
  out.set("subbit.format_version", kModelFileVersion);
  out.set("subbit.config", llama_config_to_json(c).dump());
  out.set("subbit.tokenizer", tokenizer_json);
  out.set("subbit.method", info.method);
  out.set("subbit.compression", info.compression_json);
  if (!info.chat_template.empty()) out.set("tokenizer.chat_template", info.chat_template);

  save_linear(out, *w.embedding, std::string(kEmbedding.file_name));
  put_f32(out, std::string(kFinalNorm.file_name), w.final_norm);
  // A tied model's head is stored only when its format differs from the embedding's.
  if (!w.head_is_embedding()) save_linear(out, *w.lm_head, std::string(kLmHead.file_name));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = w.layers[l];
    for (int i = 0; i < kNormsPerBlock; ++i)
      put_f32(out, file_block_tensor(l, kBlockNorms[i].file_name) + ".weight", layer.norm[i]);
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const std::string prefix = file_block_tensor(l, kBlockLinears[i].file_name);
      save_linear(out, *layer.linear[i], prefix);
      if (!layer.bias[i].empty()) put_f32(out, prefix + ".bias", layer.bias[i]);
    }
  }
  out.write(file);
}

ModelBundle load_model_file(const std::filesystem::path& path) {
  auto file = std::make_shared<GgufFile>(GgufFile::open(path));
  const std::string source = path.string();
  if (!file->has("subbit.format_version"))
    fail("{}: a GGUF file, but not a subbit model (no subbit.format_version)", source);
  const int64_t version = file->get_int("subbit.format_version");
  if (version != kModelFileVersion)
    fail("{}: subbit file format version {} is not supported (this build reads {})", source,
         version, kModelFileVersion);
  nlohmann::json config_json;
  try {
    config_json = nlohmann::json::parse(file->get_string("subbit.config"));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: subbit.config is not valid JSON: {}", source, e.what());
  }
  const LlamaConfig c = parse_llama_config(config_json, source + " (subbit.config)");

  ModelBundle bundle;
  bundle.path = path;
  bundle.container = "subbit";
  bundle.tokenizer_json = file->get_string("subbit.tokenizer");
  bundle.compression_json = file->get_string("subbit.compression");
  if (file->has("tokenizer.chat_template"))
    bundle.chat_template = file->get_string("tokenizer.chat_template");
  bundle.tokenizer = std::make_unique<Tokenizer>(
      Tokenizer::from_json_text(bundle.tokenizer_json, source + " (subbit.tokenizer)"));

  LlamaWeights w;
  auto load_layer = [&](const std::string& prefix, int64_t n_out, int64_t n_in,
                        const std::string& kind) {
    // Files written before embeddings had formats store a dense embedding without a format key.
    const std::string key = format_key(prefix);
    const std::string format =
        file->has(key) || prefix != kEmbedding.file_name ? file->get_string(key) : "dense";
    std::unique_ptr<Linear> linear = load_linear(*file, format, prefix, n_out, n_in);
    const int64_t params = n_out * n_in;
    bundle.inventory.push_back({prefix, kind, format == "dense" ? linear->describe() : format,
                                params, linear->storage_bits() / 8,
                                fmt::format("{} | {:.3f} bpw", linear->describe(),
                                            double(linear->storage_bits()) / double(params))});
    return linear;
  };
  w.embedding =
      load_layer(std::string(kEmbedding.file_name), c.vocab_size, c.hidden_size, "embedding");

  auto load_f32 = [&](const std::string& name, int64_t n, const std::string& kind) {
    bundle.inventory.push_back({name, kind, "F32", n, n * 4, ""});
    return get_f32(*file, name, n);
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LlamaLayer layer;
    for (int i = 0; i < kNormsPerBlock; ++i)
      layer.norm[i] = load_f32(file_block_tensor(l, kBlockNorms[i].file_name) + ".weight",
                               c.hidden_size, "norm");
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const auto [n_out, n_in] = linear_shape(c, i);
      const std::string prefix = file_block_tensor(l, kBlockLinears[i].file_name);
      const std::string kind(kBlockLinears[i].kind);
      layer.linear[i] = load_layer(prefix, n_out, n_in, kind);
      if (linear_has_bias(c, i)) layer.bias[i] = load_f32(prefix + ".bias", n_out, kind);
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = load_f32(std::string(kFinalNorm.file_name), c.hidden_size, "norm");
  const bool head_stored =
      !c.tie_word_embeddings || file->has(format_key(std::string(kLmHead.file_name)));
  w.lm_head = head_stored ? load_layer(std::string(kLmHead.file_name), c.vocab_size, c.hidden_size,
                                       "lm_head")
                          : w.embedding;
  w.storage.emplace_back(file);
  bundle.model = std::make_unique<LlamaModel>(c, std::move(w));
  return bundle;
}

}  // namespace subbit
