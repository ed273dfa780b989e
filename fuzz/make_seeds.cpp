// Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/: small valid inputs of
// every kind each parser accepts, built with the project's own writers (so they stay in step
// with the formats), plus short samples of the shared text. Run from the fuzz build:
//   build-fuzz/fuzz/fuzz_make_seeds [SHARED_DIR]
// Every seed is kept small (a few KiB): libFuzzer mutates faster, and the repository stays lean.
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/sketch.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model_file.h"
#include "ops/sign_matmul.h"

using namespace subbit;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kCorpus = fs::path(SUBBIT_SOURCE_DIR) / "fuzz" / "corpus";
const std::string kSeparator = "\n====\n";  // fuzz::kPartSeparator

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(kCorpus / target);
  std::ofstream(kCorpus / target / name, std::ios::binary) << bytes;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> bf16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = f32_to_bf16(v[i]);
    std::memcpy(&b[2 * i], &h, 2);
  }
  return b;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 0.1f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = std::bit_cast<float>(std::bit_cast<uint32_t>(normal(rng)) & 0xffffe000u);
  return v;  // mantissas cut to fp16 precision, so fp16 scales round-trip
}

// Writes through a scratch file, since the writers take paths.
template <typename Write>
std::string written(Write&& write) {
  const fs::path tmp = fs::temp_directory_path() / "subbit-make-seeds.tmp";
  write(tmp);
  std::string bytes = read(tmp);
  fs::remove(tmp);
  return bytes;
}

// A 16-token BPE tokenizer: small enough to embed in every model-file seed.
std::string tiny_tokenizer_json() {
  json vocab = json::object();
  const char* tokens[] = {"<unk>", "<s>", "</s>", "a", "b", "c", "d", "e",
                          " ",     "ab",  "cd",   "abcd", "<0x41>", "\xe2\x96\x81", "x", "y"};
  for (int i = 0; i < 16; ++i) vocab[tokens[i]] = i;
  json t = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens",
             {{{"id", 1}, {"content", "<s>"}, {"single_word", false}, {"lstrip", false},
               {"rstrip", false}, {"normalized", false}, {"special", true}}}},
            {"normalizer", nullptr},
            {"pre_tokenizer", nullptr},
            {"post_processor", nullptr},
            {"decoder", nullptr},
            {"model",
             {{"type", "BPE"},
              {"unk_token", "<unk>"},
              {"fuse_unk", true},
              {"byte_fallback", true},
              {"vocab", vocab},
              {"merges", {"a b", "c d", "ab cd"}}}}};
  return t.dump();
}

LlamaConfig tiny_config(bool tied) {
  LlamaConfig c;
  c.hidden_size = 16;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.intermediate_size = 32;
  c.vocab_size = 16;
  c.max_position_embeddings = 8;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

std::unique_ptr<Linear> littlebit_layer(int64_t d_out, int64_t d_in, std::mt19937& rng) {
  std::vector<LittleBitPath> paths;
  for (int path = 0; path < 2; ++path) {
    LittleBitPath p;
    p.rank = 4;
    p.h = random_floats(d_out, rng);
    p.g = random_floats(d_in, rng);
    p.l = random_floats(p.rank, rng);
    for (int64_t i = 0; i < d_out * sign_words_per_row(p.rank); ++i) p.u_signs.push_back(rng());
    for (int64_t i = 0; i < p.rank * sign_words_per_row(d_in); ++i) p.vt_signs.push_back(rng());
    paths.push_back(std::move(p));
  }
  return std::make_unique<LittleBitLinear>(d_out, d_in, std::move(paths));
}

// The tiny model with its seven linear layers in `formats` (dense, sign, rtn, littlebit,
// sketch), as a subbit model file.
std::string model_file(const std::vector<std::string>& formats, bool tied, DType embed_dtype,
                       std::mt19937& rng) {
  const LlamaConfig c = tiny_config(tied);
  std::vector<std::vector<uint8_t>> owned;
  auto make = [&](const std::string& format, int64_t d_out, int64_t d_in) -> std::unique_ptr<Linear> {
    const std::vector<float> w = random_floats(d_out * d_in, rng);
    if (format == "sign") return SignLinear::encode(w.data(), d_out, d_in);
    if (format == "rtn") return RtnLinear::encode(w.data(), d_out, d_in, 2);
    if (format == "littlebit") return littlebit_layer(d_out, d_in, rng);
    if (format == "sketch")
      return SketchLinear::encode(w.data(), d_out, d_in, sketch_params_for_bpw(d_out, d_in, 2.0), nullptr);
    owned.push_back(bf16_bytes(w));
    return std::make_unique<DenseLinear>(DenseMatrix{DType::BF16, owned.back().data(), d_out, d_in});
  };
  LlamaWeights w;
  const std::vector<float> embed = random_floats(c.vocab_size * c.hidden_size, rng);
  owned.push_back(embed_dtype == DType::F32 ? f32_bytes(embed) : bf16_bytes(embed));
  w.embedding = DenseMatrix{embed_dtype, owned.back().data(), c.vocab_size, c.hidden_size};
  LlamaLayer layer;
  layer.attn_norm = random_floats(c.hidden_size, rng, 1.0f);
  layer.mlp_norm = random_floats(c.hidden_size, rng, 1.0f);
  const auto slots = layer.linear_slots();
  for (int i = 0; i < LlamaLayer::kLinears; ++i) {
    const auto [d_out, d_in] = linear_shape(c, i);
    *slots[i] = make(formats[i % formats.size()], d_out, d_in);
  }
  w.layers.push_back(std::move(layer));
  w.final_norm = random_floats(c.hidden_size, rng, 1.0f);
  if (!tied) w.lm_head = make(formats.back(), c.vocab_size, c.hidden_size);
  return written([&](const fs::path& out) {
    save_model_file(out, c, tiny_tokenizer_json(), w, {"tiny", "mixed", "{\"bpw\":1}"});
  });
}

// A GGUF header by hand, for the value types GgufWriter never writes (8/16/32-bit integers,
// FLOAT32, arrays of them).
std::string gguf_all_value_types() {
  std::string out;
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) { u64(s.size()); out += s; };
  out += "GGUF";
  u32(3);
  u64(1);   // tensors
  u64(14);  // key-value pairs
  const std::pair<uint32_t, int> scalars[] = {{0, 1}, {1, 1}, {2, 2}, {3, 2}, {4, 4}, {5, 4},
                                              {6, 4}, {7, 1}, {10, 8}, {11, 8}, {12, 8}};
  for (const auto& [type, width] : scalars) {
    str("k.t" + std::to_string(type));
    u32(type);
    const uint64_t value = type == 7 ? 1 : 0x3f80000000000001ull >> (64 - 8 * width);
    out.append(reinterpret_cast<const char*>(&value), width);
  }
  str("k.string");
  u32(8);
  str("text \xc3\xa9");
  str("k.array.i16");
  u32(9);
  u32(3);
  u64(3);
  for (uint16_t v : {1, 0xffff, 7}) out.append(reinterpret_cast<const char*>(&v), 2);
  str("k.array.f32");
  u32(9);
  u32(6);
  u64(2);
  for (float v : {1.5f, -2.0f}) out.append(reinterpret_cast<const char*>(&v), 4);
  str("t.i8");  // tensor info: one I8 vector of 5 elements at offset 0
  u32(1);
  u64(5);
  u32(24);
  u64(0);
  out.resize((out.size() + 31) / 32 * 32, '\0');
  out += std::string("\x01\x02\x03\x04\x05", 5);
  return out;
}

void safetensors_seeds(std::mt19937& rng) {
  const std::vector<TensorToWrite> tensors = {
      {"w.bf16", DType::BF16, {2, 3}, bf16_bytes(random_floats(6, rng))},
      {"w.f32", DType::F32, {3}, f32_bytes(random_floats(3, rng))},
      {"w.f16", DType::F16, {1, 1, 2}, std::vector<uint8_t>(4, 0x3c)},
      {"empty", DType::F32, {0, 4}, {}}};
  put("safetensors", "two_dtypes_metadata",
      written([&](const fs::path& p) { write_safetensors(p, tensors, {{"format", "pt"}}); }));
  put("safetensors", "empty", written([&](const fs::path& p) { write_safetensors(p, {}); }));
  put("safetensors", "scalar", written([&](const fs::path& p) {
        write_safetensors(p, {{"s", DType::F32, {}, f32_bytes({1.0f})}});
      }));

  const std::string a = written([&](const fs::path& p) { write_safetensors(p, {tensors[0], tensors[3]}); });
  const std::string b = written([&](const fs::path& p) { write_safetensors(p, {tensors[1]}, {{"format", "pt"}}); });
  const json index = {{"metadata", {{"total_size", 28}}},
                      {"weight_map",
                       {{"w.bf16", "a.safetensors"}, {"empty", "a.safetensors"}, {"w.f32", "b.safetensors"}}}};
  put("safetensors_index", "two_shards", index.dump(1) + kSeparator + a + kSeparator + b);
  const json one = {{"weight_map", {{"w.f32", "a.safetensors"}}}};
  put("safetensors_index", "one_shard", one.dump() + kSeparator + b);
}

void gguf_seeds(std::mt19937& rng) {
  GgufWriter w;
  w.set("general.architecture", std::string("subbit"));
  w.set("b", true);
  w.set("i", int64_t(-5));
  w.set("u", uint64_t(7));
  w.set("f", 0.25);
  w.set("ints", std::vector<int64_t>{1, -2, 3});
  w.set("floats", std::vector<double>{0.5, 1e300});
  w.set("strings", std::vector<std::string>{"a", "", "\xe2\x96\x81"});
  w.set_u32("u32", 32);
  w.set_f32("f32", 1.5f);
  w.add_tensor("t.f32", GgmlType::F32, {2, 3}, f32_bytes(random_floats(6, rng)));
  w.add_tensor("t.bf16", GgmlType::BF16, {4}, bf16_bytes(random_floats(4, rng)));
  w.add_tensor("t.i32", GgmlType::I32, {1, 1, 1, 2}, std::vector<uint8_t>(8, 1));
  w.add_tensor("t.empty", GgmlType::F16, {0}, {});
  put("gguf", "writer_all_kinds", written([&](const fs::path& p) { w.write(p); }));
  put("gguf", "hand_all_value_types", gguf_all_value_types());
}

void model_file_seeds(std::mt19937& rng) {
  put("model_file", "dense_f32_tied", model_file({"dense"}, true, DType::F32, rng));
  put("model_file", "sign_rtn_untied", model_file({"sign", "rtn"}, false, DType::BF16, rng));
  put("model_file", "littlebit", model_file({"littlebit"}, true, DType::BF16, rng));
  put("model_file", "sketch", model_file({"sketch"}, false, DType::BF16, rng));
  put("model_file", "all_formats",
      model_file({"dense", "sign", "rtn", "littlebit", "sketch"}, false, DType::F32, rng));
}

void config_seeds(const fs::path& shared) {
  for (const char* model : {"sb-8m", "stories260K", "sb-8m-llama3", "sb-8m-qwen2"})
    if (fs::exists(shared / "models" / model / "config.json"))
      put("config", model, read(shared / "models" / model / "config.json"));
  const json v5 = {{"model_type", "llama"}, {"architectures", {"LlamaForCausalLM"}},
                   {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                   {"num_key_value_heads", nullptr}, {"head_dim", 16}, {"intermediate_size", 128},
                   {"vocab_size", 100}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
                   {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 5e5}}},
                   {"eos_token_id", {2, 3}}, {"bos_token_id", nullptr}, {"pretraining_tp", 1},
                   {"attention_bias", false}, {"mlp_bias", false}, {"hidden_act", "silu"},
                   {"tie_word_embeddings", true}};
  put("config", "transformers5", v5.dump(1));
}

// A byte-level tokenizer cut down from a real one: its first `keep` ids and the merges among them.
std::string truncated_tokenizer(const fs::path& file, int keep) {
  json t = json::parse(read(file));
  json& model = t["model"];
  json vocab = json::object();
  for (auto& [token, id] : model["vocab"].items())
    if (id.get<int>() < keep) vocab[token] = id;
  json merges = json::array();
  for (const json& merge : model["merges"]) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string m = merge.get<std::string>();
      left = m.substr(0, m.find(' '));
      right = m.substr(m.find(' ') + 1);
    } else {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    if (vocab.contains(left) && vocab.contains(right) && vocab.contains(left + right)) merges.push_back(merge);
  }
  model["vocab"] = vocab;
  model["merges"] = merges;
  json added = json::array();
  for (const json& token : t["added_tokens"])
    if (token["id"].get<int>() < keep) added.push_back(token);
  t["added_tokens"] = added;
  return t.dump();
}

void tokenizer_seeds(const fs::path& shared) {
  put("tokenizer_json", "tiny_bpe", tiny_tokenizer_json());
  put("tokenizer_json", "stories260K_sentencepiece",
      read(fs::path(SUBBIT_SOURCE_DIR) / "fuzz" / "tokenizers" / "stories260K.json"));
  put("tokenizer_json", "sb8m_byte_level_cut",
      truncated_tokenizer(fs::path(SUBBIT_SOURCE_DIR) / "models" / "sb-8m" / "tokenizer.json", 300));
  const fs::path smollm = shared / "models" / "smollm2-tokenizer" / "tokenizer.json";
  if (fs::exists(smollm)) put("tokenizer_json", "smollm2_cut", truncated_tokenizer(smollm, 300));
}

// Short lines of the shared training and development text, golden-test strings, and bytes that
// are not UTF-8.
void text_seeds(const fs::path& shared) {
  std::vector<std::string> samples = {
      "", " ", "  leading and trailing  ", "Hello world", "12345 67.89", "<s> </s> <unk>",
      "<|endoftext|>", "\xe2\x96\x81word", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82",
      "\xff\xfe\x80 invalid \xc3", "\xed\xa0\x80 surrogate", "tab\tnew\nline\r\n", std::string("nul\0byte", 8)};
  const fs::path text[] = {shared / "text" / "train" / "calib.txt",
                           shared / "text" / "tinystories_validation_100.txt"};
  for (const fs::path& file : text) {
    std::ifstream in(file);
    std::string line;
    for (int kept = 0; kept < 6 && std::getline(in, line);)
      if (line.size() > 40 && line.size() < 400) samples.push_back(line), ++kept;
  }
  if (fs::exists(shared / "text" / "tokenizer_golden.json")) {
    const json golden = json::parse(read(shared / "text" / "tokenizer_golden.json"));
    int kept = 0;
    std::function<void(const json&)> collect = [&](const json& j) {
      if (kept >= 12) return;
      if (j.is_object() && j.contains("text") && j["text"].is_string()) {
        const std::string s = j["text"].get<std::string>();
        if (s.size() < 300) samples.push_back(s), ++kept;
      }
      if (j.is_structured())
        for (const json& child : j) collect(child);
    };
    collect(golden);
  }
  for (size_t i = 0; i < samples.size(); ++i)
    for (const char* target : {"encode_byte_level", "encode_sentencepiece"})
      put(target, "text" + std::to_string(i), samples[i]);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path shared = argc > 1 ? fs::path(argv[1]) : fs::path(SUBBIT_SOURCE_DIR) / ".." / "shared";
  std::mt19937 rng(12);
  fs::remove_all(kCorpus);
  safetensors_seeds(rng);
  gguf_seeds(rng);
  model_file_seeds(rng);
  config_seeds(shared);
  tokenizer_seeds(shared);
  text_seeds(shared);
  std::cout << "seeds written to " << kCorpus.string() << "\n";
}
