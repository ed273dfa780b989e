#include "compress/pipeline.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cstdio>
#include <map>
#include <typeinfo>

#include "common/error.h"
#include "model/loader.h"
#include "model/model_file.h"
#include "model/tensors.h"

namespace subbit::compress {

namespace {

// One line per linear layer ("linear_L_I" in TorchLlama): how much sign learning QAT did.
void log_sign_flips(const std::vector<QatResult::SignFlips>& tensors,
                    const std::function<void(const std::string&)>& log) {
  std::map<std::pair<int64_t, int64_t>, QatResult::SignFlips> by_linear;
  QatResult::SignFlips all;
  for (const QatResult::SignFlips& t : tensors) {
    int64_t layer = -1, index = -1;
    if (std::sscanf(t.name.c_str(), "linear_%" SCNd64 "_%" SCNd64 ".", &layer, &index) != 2) continue;
    for (QatResult::SignFlips* sum : {&by_linear[{layer, index}], &all}) {
      sum->entries += t.entries;
      sum->flips += t.flips;
      sum->changed += t.changed;
    }
  }
  if (all.entries == 0) return;
  for (const auto& [key, f] : by_linear)
    log(fmt::format("sign flips, block {} {}: {} over training, {} of {} signs changed ({:.3f}%)", key.first,
                    kBlockLinears.at(key.second).file_name, f.flips, f.changed, f.entries, 100.0 * f.changed / f.entries));
  log(fmt::format("sign flips, all layers: {} over training, {} of {} signs changed ({:.3f}%)", all.flips, all.changed,
                  all.entries, 100.0 * all.changed / all.entries));
}

}  // namespace

CompressReport compress_model(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                              const CompressOptions& o, CompressMethod& method, const CompressCallbacks& cb) {
  const CompressMethodRow& row = find_compress_method(o.method);
  const std::unique_ptr<CompressMethod> fresh = row.make();
  if (typeid(method) != typeid(*fresh))
    fail("compress_model: the method object was not made by the \"{}\" row", o.method);
  if (row.targets_bpw && !(o.bpw > 0 && o.bpw <= 16)) fail("--bpw must be in (0, 16], got {}", o.bpw);
  method.validate();
  auto* trainable = dynamic_cast<TrainableMethod*>(&method);
  if (!trainable && o.qat.train_tokens > 0)
    fail("--method {} is post-training only and cannot be trained (drop --train-tokens)", o.method);
  if (!std::filesystem::is_directory(model_dir))
    fail("{}: compress reads a Hugging Face model directory", model_dir.string());
  ModelBundle bundle = load_hf_model(model_dir);
  const LlamaModel& model = *bundle.model;
  const LlamaConfig& c = model.config();
  auto log = [&](const std::string& line) { if (cb.log) cb.log(line); };

  CompressReport report;
  LlamaWeights weights;
  const std::string model_name =
      (model_dir.filename().empty() ? model_dir.parent_path() : model_dir).filename().string();
  nlohmann::json details = {{"method", o.method}, {"source", model_name}};
  method.prepare(bundle, log, details);
  method.record(details);
  if (row.targets_bpw) details["target_bpw"] = o.bpw;
  if (trainable) {
    TorchLlama teacher(model), student(model);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      for (int i = 0; i < kLinearsPerBlock; ++i) {
        const torch::Tensor w = std::dynamic_pointer_cast<FrozenDense>(teacher.linear(l, i))->weight();
        student.set_linear(l, i, trainable->make_trainable(w, {l, i, o.bpw}));
      }
      log(fmt::format("{} block {}/{}", row.built, l + 1, c.num_layers));
    }
    if (o.qat.train_tokens > 0) {
      if (o.train_texts.empty()) fail("--train-tokens needs --train-text");
      // Enough text for every step to see fresh windows.
      const std::vector<int32_t> tokens =
          load_training_tokens(o.train_texts, *bundle.tokenizer, o.qat.train_tokens + o.qat.seq * o.qat.batch);
      log(fmt::format("training on {} tokens of text", tokens.size()));
      report.qat = train_qat(teacher, student, tokens, o.qat, cb.qat_progress);
      report.trained = true;
      log_sign_flips(report.qat.sign_flips, log);
      std::vector<std::string> names;
      for (const auto& f : o.train_texts) names.push_back(f.filename().string());
      details["qat"] = {{"tokens", report.qat.tokens}, {"steps", report.qat.steps},
                        {"lr", o.qat.lr},           {"seq", o.qat.seq},
                        {"batch", o.qat.batch},     {"train_norms", o.qat.train_norms},
                        {"first_loss", report.qat.first_loss},
                        {"last_loss", report.qat.last_loss},
                        {"device", o.qat.device.is_cuda() ? "cuda" : "cpu"},
                        {"texts", names}};
    }
    weights = student.to_runtime(model);
  } else {
    const auto& encoder = dynamic_cast<const EncodingMethod&>(method);
    const LlamaWeights& src = model.weights();
    weights.embedding = src.embedding;
    weights.storage = src.storage;
    weights.final_norm = src.final_norm;
    weights.lm_head = c.tie_word_embeddings ? std::make_unique<DenseLinear>(src.embedding)
                                            : std::make_unique<DenseLinear>(dynamic_cast<const DenseLinear&>(*src.lm_head).matrix());
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const LlamaLayer& s = src.layers[l];
      LlamaLayer layer;
      layer.norm = s.norm;
      layer.bias = s.bias;
      for (int i = 0; i < kLinearsPerBlock; ++i) {
        const Linear& original = *s.linear[i];
        std::vector<float> w(original.n_out() * original.n_in());
        original.dequantize(w.data());
        layer.linear[i] = encoder.encode(w.data(), original.n_out(), original.n_in(), {l, i, o.bpw});
      }
      weights.layers.push_back(std::move(layer));
      log(fmt::format("{} block {}/{}", row.built, l + 1, c.num_layers));
    }
  }

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = weights.layers[l];
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const Linear& lin = *layer.linear[i];
      const int64_t params = lin.n_in() * lin.n_out();
      // A bias stays full precision (fp32 in the file) and counts in the layer's bits.
      const int64_t bits = lin.storage_bits() + int64_t(layer.bias[i].size()) * 32;
      report.layers.push_back({file_block_tensor(l, kBlockLinears[i].file_name), lin.n_out(), lin.n_in(),
                               lin.describe(), double(bits) / double(params)});
      report.linear_params += params;
      report.linear_bits += bits;
    }
  }
  details["linear_bpw"] = double(report.linear_bits) / double(report.linear_params);
  save_model_file(out, c, bundle.tokenizer_json, weights, {model_name, o.method, details.dump(), bundle.chat_template});
  if (!o.qat.checkpoint.empty()) std::filesystem::remove(o.qat.checkpoint);
  return report;
}

}  // namespace subbit::compress
