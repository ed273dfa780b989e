#include "compress/pipeline.h"

#include <fmt/format.h>

#include <array>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <typeinfo>

#include "common/error.h"
#include "compress/block_checkpoint.h"
#include "compress/sensitivity.h"
#include "compress/tensor_types.h"
#include "formats/linear.h"
#include "io/mapped_file.h"
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
    if (std::sscanf(t.name.c_str(), "linear_%" SCNd64 "_%" SCNd64 ".", &layer, &index) != 2)
      continue;
    for (QatResult::SignFlips* sum : {&by_linear[{layer, index}], &all}) {
      sum->entries += t.entries;
      sum->flips += t.flips;
      sum->changed += t.changed;
    }
  }
  if (all.entries == 0) return;
  for (const auto& [key, f] : by_linear)
    log(fmt::format("sign flips, block {} {}: {} over training, {} of {} signs changed ({:.3f}%)",
                    key.first, kBlockLinears.at(key.second).file_name, f.flips, f.changed,
                    f.entries, 100.0 * f.changed / f.entries));
  log(fmt::format("sign flips, all layers: {} over training, {} of {} signs changed ({:.3f}%)",
                  all.flips, all.changed, all.entries, 100.0 * all.changed / all.entries));
}

// The embedding or the LM head: encoded once (`runtime`), or trainable in QAT (`trainable`).
struct OutsideLayer {
  TensorType type;
  std::shared_ptr<const Linear> runtime;
  std::shared_ptr<TrainableLinear> trainable;
  int64_t bits() const {
    return runtime ? runtime->storage_bits() : trainable->to_runtime()->storage_bits();
  }
};

// Builds `t` from the original (n_out, n_in) weights at `bpw` (for types sized by it).
void build_outside(OutsideLayer& t, const std::shared_ptr<const Linear>& original,
                   const LayerToCompress& layer, bool train) {
  if (t.type.dense()) {
    t.runtime = original;
    return;
  }
  const torch::Tensor w = dense_weight(*original);
  if (const auto* encoder = dynamic_cast<const EncodingMethod*>(t.type.method.get())) {
    t.runtime = encoder->encode(w.data_ptr<float>(), w.size(0), w.size(1), layer);
    return;
  }
  auto trainable = dynamic_cast<const TrainableMethod&>(*t.type.method).make_trainable(w, layer);
  if (train)
    t.trainable = std::move(trainable);
  else
    t.runtime = trainable->to_runtime();
}

// make(i) for the kLinearsPerBlock layers of a block, side by side, largest first: LAPACK's
// eigensolvers and SVDs use a second core poorly, whole layers use every core. Inside the
// parallel region libtorch, OpenBLAS and our kernels run single-threaded, so what is built does
// not depend on --threads.
template <typename T, typename Make>
std::array<T, kLinearsPerBlock> build_block_layers(const LlamaConfig& c, Make&& make) {
  std::array<int, kLinearsPerBlock> order;
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const auto [a_out, a_in] = linear_shape(c, a);
    const auto [b_out, b_in] = linear_shape(c, b);
    return a_out * a_in > b_out * b_in;
  });
  std::array<T, kLinearsPerBlock> built;
  std::exception_ptr failure;
  std::mutex failure_mutex;
#pragma omp parallel for schedule(dynamic, 1)
  for (int k = 0; k < kLinearsPerBlock; ++k) {
    try {
      built[order[k]] = make(order[k]);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return built;
}

// What a post-training checkpoint's blocks depend on besides the options: the source checkpoint's
// config and weight files (size and modification time) and the file format.
std::string source_identity(const std::filesystem::path& dir) {
  nlohmann::json files = nlohmann::json::object();  // sorted by name
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || !(name == "config.json" || name.ends_with(".safetensors")))
      continue;
    files[name] = {entry.file_size(), entry.last_write_time().time_since_epoch().count()};
  }
  return nlohmann::json{{"dir", std::filesystem::absolute(dir).lexically_normal().string()},
                        {"files", files},
                        {"format_version", kModelFileVersion}}
      .dump();
}

}  // namespace

CompressReport compress_model(const std::filesystem::path& model_dir,
                              const std::filesystem::path& out, const CompressOptions& o,
                              const std::shared_ptr<CompressMethod>& method_ptr,
                              const CompressCallbacks& cb) {
  CompressMethod& method = *method_ptr;
  const CompressMethodRow& row = find_compress_method(o.method);
  const std::unique_ptr<CompressMethod> fresh = row.make();
  if (typeid(method) != typeid(*fresh))
    fail("compress_model: the method object was not made by the \"{}\" row", o.method);
  if (row.targets_bpw && !(o.bpw > 0 && o.bpw <= 16))
    fail("--bpw must be in (0, 16], got {}", o.bpw);
  method.validate();
  auto* trainable = dynamic_cast<TrainableMethod*>(&method);
  const bool train = o.qat.train_tokens > 0;
  if (!trainable && train)
    fail("--method {} is post-training only and cannot be trained (drop --train-tokens)", o.method);
  const bool root = !o.qat.data_parallel || o.qat.data_parallel->is_root();
  if (o.budget != "linear" && o.budget != "whole")
    fail("--budget must be linear or whole, got \"{}\"", o.budget);
  if (o.allocate != "uniform" && o.allocate != "sensitivity")
    fail("--allocate must be uniform or sensitivity, got \"{}\"", o.allocate);
  if (o.allocate == "sensitivity" && (!trainable || !row.targets_bpw))
    fail("--allocate sensitivity: --method {} is not sized by --bpw (use littlebit or sketch)",
         o.method);
  if (o.allocate == "sensitivity" && o.sensitivity_texts.empty() && o.train_texts.empty())
    fail("--allocate sensitivity needs --sensitivity-text (or --train-text)");
  if (method.needs_token_counts())
    fail("--method {}: widths by token frequency apply to --embed-type/--head-type only (give the "
         "linear layers a whole number of bits)",
         o.method);
  if (o.budget == "whole" && !row.targets_bpw)
    fail("--budget whole: --method {} is not sized by --bpw (use {})", o.method,
         "littlebit or sketch");
  // With a whole-file budget and no type given, the embedding (and with it a tied head) takes the
  // method itself, at the bpw the budget leaves.
  const std::string embed_spec = !o.embed_type.empty() ? o.embed_type
                                 : o.budget == "whole" ? o.method
                                                       : "dense";
  OutsideLayer embed{parse_tensor_type(embed_spec, "--embed-type", o.method, method_ptr), nullptr,
                     nullptr};
  if (!std::filesystem::is_directory(model_dir))
    fail("{}: compress reads a Hugging Face model directory", model_dir.string());
  ModelBundle bundle = load_hf_model(model_dir);
  const LlamaModel& model = *bundle.model;
  const LlamaConfig& c = model.config();
  const LlamaWeights& src = model.weights();
  auto log = [&](const std::string& line) {
    if (cb.log) cb.log(line);
  };
  auto blocks_built = [&](int64_t done) {
    if (cb.block_progress) cb.block_progress({std::string(row.built), done, c.num_layers});
  };
  // A tied head without a type of its own follows the embedding and is stored once with it.
  const bool head_follows_embedding =
      c.tie_word_embeddings && (o.head_type.empty() || o.head_type == embed_spec);
  const std::string head_spec = !o.head_type.empty()    ? o.head_type
                                : c.tie_word_embeddings ? embed_spec
                                : o.budget == "whole"   ? o.method
                                                        : "dense";
  OutsideLayer head{parse_tensor_type(head_spec, "--head-type", o.method, method_ptr), nullptr,
                    nullptr};
  const auto& frequency_texts = o.sensitivity_texts.empty() ? o.train_texts : o.sensitivity_texts;
  const bool count_tokens = (!embed.type.dense() && embed.type.method->needs_token_counts()) ||
                            (!head.type.dense() && head.type.method->needs_token_counts());
  if (count_tokens && frequency_texts.empty())
    fail("{} / {}: widths by token frequency need --sensitivity-text (or --train-text)", embed_spec,
         head_spec);
  if (head_follows_embedding && train && !embed.type.dense() &&
      !dynamic_cast<const TrainableMethod*>(embed.type.method.get()))
    log(fmt::format("the tied embedding and head ({}) stay as encoded during QAT", embed_spec));

  // Parameters and the bits of what is not sized by the budget: norms and biases (F32), dense or
  // fixed-type embedding and head.
  // The tensors that take the bpw the budget leaves, each with the method that sizes it.
  struct SizedTensor {
    const CompressMethod* method;
    int64_t n_out, n_in;
  };
  std::vector<SizedTensor> sized;
  const int64_t norm_params = (2 * c.num_layers + 1) * c.hidden_size;
  int64_t linear_params = 0, fixed_params = norm_params;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const auto [n_out, n_in] = linear_shape(c, i);
      sized.push_back({&method, n_out, n_in});
      linear_params += n_out * n_in;
      fixed_params += int64_t(src.layers[l].bias[i].size());
    }
  int64_t fixed_bits = 32 * fixed_params;
  const int64_t table_params = c.vocab_size * c.hidden_size;
  std::vector<OutsideLayer*> outside = {&embed};
  if (!head_follows_embedding) outside.push_back(&head);
  const auto which_of = [&](const OutsideLayer* t) {
    return t == &embed ? kEmbeddingTensor : kHeadTensor;
  };
  const auto original_of = [&](const OutsideLayer* t) {
    return t == &embed ? src.embedding : src.lm_head;
  };
  // Each token's count plus one: unseen tokens keep a little weight. (vocab)
  std::vector<double> token_importance;
  int64_t counted_tokens = 0;
  if (count_tokens) {
    const std::vector<int32_t> tokens =
        load_training_tokens(frequency_texts, *bundle.tokenizer, o.frequency_tokens);
    token_importance.assign(c.vocab_size, 1.0);
    for (const int32_t t : tokens)
      if (t >= 0 && t < c.vocab_size) token_importance[t] += 1;
    counted_tokens = int64_t(tokens.size());
    log(fmt::format("token frequencies from {} tokens of text", counted_tokens));
  }
  // A trainable embedding trains only as a tied head that shares it.
  const auto build = [&](OutsideLayer* t, double target_bpw) {
    build_outside(*t, original_of(t),
                  {kOutsideBlocks, which_of(t), target_bpw, token_importance},
                  train && (t == &head || head_follows_embedding));
  };
  const bool whole = o.budget == "whole";
  std::vector<OutsideLayer*> sized_outside;  // built once their targets are known
  for (OutsideLayer* t : outside) {
    if (t->type.row && t->type.row->targets_bpw && t->type.bpw == 0) {
      sized.push_back({t->type.method.get(), c.vocab_size, c.hidden_size});
      sized_outside.push_back(t);
      continue;
    }
    build(t, t->type.bpw);
    fixed_bits += t->bits();
  }
  const int64_t total_params =
      linear_params + fixed_params + table_params * (c.tie_word_embeddings ? 1 : 2);
  double bpw = o.bpw;
  if (whole) {
    // The largest per-tensor target whose stored bits (ranks and tables round, minimum sizes
    // overshoot) fit the budget: the stored total only grows with the target, so bisect.
    const auto sized_bits = [&](double target) {
      double bits = 0;
      for (const SizedTensor& t : sized) bits += t.method->stored_bits(t.n_out, t.n_in, target);
      return bits;
    };
    const double budget_bits = o.bpw * double(total_params) - double(fixed_bits);
    const double floor_bits = sized_bits(1e-9);
    if (floor_bits > budget_bits)
      fail(
          "--budget whole --bpw {}: the smallest layers --method {} builds (minimum rank or table) "
          "and the tensors "
          "not sized by it (norms, biases, {}{}) already take {:.4f} bits per parameter; give a "
          "larger --bpw or "
          "smaller --embed-type/--head-type",
          o.bpw, o.method, embed_spec, head_follows_embedding ? "" : ", " + head_spec,
          (floor_bits + double(fixed_bits)) / double(total_params));
    double lo = 1e-9, hi = 16;
    if (sized_bits(hi) <= budget_bits) lo = hi;
    for (int i = 0; i < 60 && hi - lo > 1e-9; ++i) {
      const double mid = 0.5 * (lo + hi);
      (sized_bits(mid) <= budget_bits ? lo : hi) = mid;
    }
    bpw = lo;
    log(fmt::format("whole-file budget {} bits/param: the linear layers{} target {:.4f} bpw", o.bpw,
                    sized.size() > size_t(kLinearsPerBlock * c.num_layers)
                        ? " (and the embedding/head sized by it)"
                        : "",
                    bpw));
  }
  // The embedding and head sized by the budget take its target, or sensitivity's allocation.
  std::array<double, 2> outside_bpw{bpw, bpw};  // (embedding, head)
  const auto build_sized_outside = [&] {
    for (OutsideLayer* t : sized_outside)
      build(t, outside_bpw[which_of(t)]);
    if (head_follows_embedding) head = embed;
  };

  CompressReport report;
  report.linear_target_bpw = bpw;
  std::vector<std::array<double, kLinearsPerBlock>> layer_bpw(c.num_layers);  // (layers, linears)
  for (auto& targets : layer_bpw) targets.fill(bpw);
  LlamaWeights weights;
  std::optional<BlockCheckpoint> checkpoint;  // post-training only
  const std::string model_name =
      (model_dir.filename().empty() ? model_dir.parent_path() : model_dir).filename().string();
  nlohmann::json details = {{"method", o.method}, {"source", model_name}};
  method.prepare(bundle, log, details);
  method.record(details);
  if (row.targets_bpw) details["target_bpw"] = bpw;
  details["budget"] = o.budget;
  if (whole) details["whole_target_bpw"] = o.bpw;
  details["embed_type"] = embed_spec;
  details["head_type"] = head_follows_embedding ? "tied" : head_spec;
  if (count_tokens) details["token_frequency_tokens"] = counted_tokens;
  // The libtorch graph (teacher and student) is built only for what runs the model: QAT and the
  // sensitivity measurement. Post-training compression streams: one layer's fp32 weights at a time.
  if (trainable && (train || o.allocate == "sensitivity")) {
    TorchLlama teacher(model);
    if (o.allocate == "sensitivity") {
      const auto& texts = o.sensitivity_texts.empty() ? o.train_texts : o.sensitivity_texts;
      const std::vector<int32_t> tokens =
          load_training_tokens(texts, *bundle.tokenizer, o.sensitivity_tokens);
      // Tables sized by another method than the linears' keep the uniform target: one rate
      // model cannot trade bits between two methods' curves.
      std::vector<SizedTable> tables;
      for (OutsideLayer* t : sized_outside)
        if (t->type.method.get() == &method)
          tables.push_back({which_of(t), t == &embed && head_follows_embedding,
                            dense_weight(*original_of(t))});
      std::vector<LayerSensitivity> layers =
          measure_sensitivity(teacher, *trainable, bpw, tables, tokens, o.qat.seq, log);
      tables.clear();
      double budget_bits = 0;  // what the uniform target stores
      for (const LayerSensitivity& s : layers)
        budget_bits += method.stored_bits(s.n_out, s.n_in, bpw);
      allocate_by_sensitivity(layers, method, bpw, budget_bits);
      nlohmann::json table = nlohmann::json::array();
      for (const LayerSensitivity& s : layers) {
        std::string name;
        if (s.block == kOutsideBlocks) {
          outside_bpw[s.index] = s.allocated_bpw;
          name = (s.index == kHeadTensor ? kLmHead : kEmbedding).file_name;
        } else {
          layer_bpw[s.block][s.index] = s.allocated_bpw;
          name = file_block_tensor(s.block, kBlockLinears[s.index].file_name);
        }
        table.push_back({{"layer", name},
                         {"kl", s.kl_at_target},
                         {"kl_double", s.kl_at_double},
                         {"target_bpw", s.allocated_bpw}});
      }
      details["allocation"] = {
          {"rule", "sensitivity"}, {"tokens", tokens.size()}, {"layers", table}};
    }
    build_sized_outside();
    TorchLlama student(teacher, TorchLlama::ShareFrozen{});
    if (embed.runtime && !embed.type.dense()) student.set_embedding(embed.runtime);
    if (head.trainable) {
      student.set_head(head.trainable, head_follows_embedding);
    } else if (!head.type.dense()) {
      // Trained against the encoded head, frozen; deployed as encoded.
      student.set_head(std::make_shared<FrozenDense>(dense_weight(*head.runtime)), false);
    }
    blocks_built(0);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const auto built = build_block_layers<std::shared_ptr<TrainableLinear>>(c, [&](int i) {
        const torch::Tensor w =
            std::dynamic_pointer_cast<FrozenDense>(teacher.linear(l, i))->weight();
        return trainable->make_trainable(w, {l, i, layer_bpw[l][i]});
      });
      for (int i = 0; i < kLinearsPerBlock; ++i) student.set_linear(l, i, built[i]);
      blocks_built(l + 1);
    }
    if (train) {
      if (o.train_texts.empty()) fail("--train-tokens needs --train-text");
      // Enough text for every step to see fresh windows; the same text on every rank, which
      // train_qat shares out by window.
      const int64_t global_batch = o.qat.sequences_per_step();
      const std::vector<int32_t> tokens = load_training_tokens(
          o.train_texts, *bundle.tokenizer, o.qat.train_tokens + o.qat.seq * global_batch);
      log(fmt::format("training on {} tokens of text", tokens.size()));
      report.qat = train_qat(teacher, student, tokens, o.qat, cb.qat_progress);
      report.trained = true;
      log_sign_flips(report.qat.sign_flips, log);
      std::vector<std::string> names;
      for (const auto& f : o.train_texts) names.push_back(f.filename().string());
      details["qat"] = {{"tokens", report.qat.tokens},
                        {"steps", report.qat.steps},
                        {"lr", o.qat.lr},
                        {"seq", o.qat.seq},
                        // Sequences per step over all ranks: R ranks of b train as one of R*b.
                        {"batch", global_batch},
                        {"train_norms", o.qat.train_norms},
                        {"distill", o.qat.blockwise ? "blockwise" : "end-to-end"},
                        {"first_loss", report.qat.first_loss},
                        {"last_loss", report.qat.last_loss},
                        {"device", o.qat.device.is_cuda() ? "cuda" : "cpu"},
                        {"texts", names}};
    }
    weights = student.to_runtime(model);
    if (!head.trainable && !head.type.dense()) {
      weights.lm_head = head.runtime;
      if (head_follows_embedding) weights.embedding = head.runtime;
    }
  } else {
    build_sized_outside();
    const auto encode = [&](std::vector<float>& w, const Linear& original,
                            const LayerToCompress& layer) {
      if (!trainable)
        return dynamic_cast<const EncodingMethod&>(method).encode(w.data(), original.n_out(),
                                                                  original.n_in(), layer);
      const torch::Tensor t =
          torch::from_blob(w.data(), {original.n_out(), original.n_in()}, torch::kFloat32);
      return trainable->make_trainable(t, layer)->to_runtime();
    };
    weights.storage = src.storage;
    weights.final_norm = src.final_norm;
    weights.embedding = embed.runtime;
    weights.lm_head = head_follows_embedding ? embed.runtime : head.runtime;
    if (!o.block_checkpoint.empty()) {
      checkpoint.emplace(o.block_checkpoint, details.dump() + " " + source_identity(model_dir));
      if (const int64_t saved = checkpoint->saved_blocks(c.num_layers); saved > 0)
        log(fmt::format("resuming from {}: blocks 0-{} of {} are built",
                        o.block_checkpoint.string(), saved - 1, c.num_layers));
    }
    blocks_built(0);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const LlamaLayer& s = src.layers[l];
      LlamaLayer layer;
      layer.norm = s.norm;
      layer.bias = s.bias;
      std::shared_ptr<const GgufFile> saved_file;
      if (auto saved = checkpoint ? checkpoint->load(l, c, saved_file) : std::nullopt) {
        for (int i = 0; i < kLinearsPerBlock; ++i) layer.linear[i] = std::move((*saved)[i]);
        weights.storage.emplace_back(saved_file);
        weights.layers.push_back(std::move(layer));
        blocks_built(l + 1);
        continue;
      }
      auto built = build_block_layers<std::unique_ptr<Linear>>(c, [&](int i) {
        const Linear& original = *s.linear[i];
        std::vector<float> w(original.n_out() * original.n_in());  // (n_out, n_in)
        original.dequantize(w.data());
        // Each source weight is read once: returning its pages keeps one block of the checkpoint
        // resident instead of all of it (13.5 GB for Llama-2-7B).
        if (const auto* dense = dynamic_cast<const DenseLinear*>(&original))
          release_pages(dense->matrix().data, size_t(original.storage_bits() / 8));
        return encode(w, original, {l, i, layer_bpw[l][i]});
      });
      if (checkpoint) checkpoint->save(l, built);
      for (int i = 0; i < kLinearsPerBlock; ++i) layer.linear[i] = std::move(built[i]);
      weights.layers.push_back(std::move(layer));
      blocks_built(l + 1);
    }
  }

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayer& layer = weights.layers[l];
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const Linear& lin = *layer.linear[i];
      const int64_t params = lin.n_in() * lin.n_out();
      // A bias stays full precision (fp32 in the file) and counts in the layer's bits.
      const int64_t bits = lin.storage_bits() + int64_t(layer.bias[i].size()) * 32;
      report.layers.push_back({file_block_tensor(l, kBlockLinears[i].file_name), lin.n_out(),
                               lin.n_in(), lin.describe(), double(bits) / double(params),
                               layer_bpw[l][i]});
      report.linear_params += params;
      report.linear_bits += bits;
    }
  }
  report.whole_params = total_params;
  report.whole_bits = report.linear_bits + 32 * norm_params + weights.embedding->storage_bits() +
                      (weights.head_is_embedding() ? 0 : weights.lm_head->storage_bits());
  report.embedding = weights.embedding->describe();
  report.head =
      weights.head_is_embedding() ? "stored once with the embedding" : weights.lm_head->describe();
  details["linear_bpw"] = double(report.linear_bits) / double(report.linear_params);
  details["whole_bpw"] = double(report.whole_bits) / double(report.whole_params);
  // Every rank holds the same trained student; one writes it.
  if (!root) return report;
  save_model_file(out, c, bundle.tokenizer_json, weights,
                  {model_name, o.method, details.dump(), bundle.chat_template});
  if (!o.qat.checkpoint.empty()) std::filesystem::remove(o.qat.checkpoint);
  if (checkpoint) checkpoint->remove(c.num_layers);
  return report;
}

}  // namespace subbit::compress
