// subbit info MODEL: architecture, parameters and bytes per tensor kind, bits per weight.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/commands.h"
#include "formats/format_table.h"
#include "model/loader.h"

namespace subbit::cli {

namespace {

std::string human_bytes(double bytes) {
  if (bytes >= 1024.0 * 1024 * 1024)
    return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024 * 1024));
  if (bytes >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", bytes / (1024.0 * 1024));
  if (bytes >= 1024.0) return fmt::format("{:.2f} KiB", bytes / 1024.0);
  return fmt::format("{:.0f} B", bytes);
}

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f} B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f} M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.2f} K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

}  // namespace

Action add_info_command(CLI::App& app) {
  struct Options {
    std::string model;
    bool tensors = false;
    int64_t ctx = 0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("info", "architecture, parameters, sizes and bits per weight");
  cmd->add_option("model", o->model, "model directory or .subbit file")->required();
  cmd->add_flag("--tensors", o->tensors, "list every tensor");
  cmd->add_option("-c,--ctx", o->ctx, "also report the KV cache for this context")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));

  return [o] {
    ModelBundle bundle = load_model(o->model);
    const LlamaConfig& c = bundle.model->config();
    if (o->ctx > 0) check_context(bundle, o->ctx, "--ctx");
    fmt::print("model:        {} ({})\n", bundle.path.string(), bundle.container);
    const nlohmann::json hf_config = llama_config_to_json(c);
    fmt::print(
        "architecture: {}, {} layers, hidden {}, heads {} / kv {} (head_dim {}), "
        "ffn {}, vocab {}, max ctx {}\n",
        hf_config["architectures"][0].get<std::string>(), c.num_layers, c.hidden_size, c.num_heads,
        c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size, c.max_position_embeddings);
    std::string rope = fmt::format("rope_theta {}", c.rope_theta);
    if (hf_config.contains("rope_scaling"))
      rope += fmt::format(
          " ({} scaling x{}{})", hf_config["rope_scaling"]["rope_type"].get<std::string>(),
          c.rope_scaling.factor,
          c.rope_scaling.original_max_position_embeddings > 0
              ? fmt::format(", original ctx {}", c.rope_scaling.original_max_position_embeddings)
              : "");
    std::vector<std::string> biases;
    if (c.qkv_bias) biases.push_back("q/k/v");
    if (c.o_bias) biases.push_back("o");
    if (c.mlp_bias) biases.push_back("mlp");
    fmt::print("              {}, rms_norm_eps {}, tied embeddings: {}, biases: {}{}\n", rope,
               c.rms_norm_eps, c.tie_word_embeddings ? "yes" : "no",
               biases.empty() ? "none" : fmt::format("{}", fmt::join(biases, ", ")),
               c.sliding_window ? fmt::format(", sliding window {}", *c.sliding_window) : "");
    fmt::print("tokenizer:    {} tokens\n", bundle.tokenizer->vocab_size());
    // The cache holds f32 keys and values for every layer and position; it is allocated per run
    // for the context used, so the model's maximum is the worst case.
    fmt::print("kv cache:     {} at max ctx {} (f32 keys + values, {} per token)",
               human_bytes(double(RunState::bytes_for(c, c.max_position_embeddings))),
               c.max_position_embeddings, human_bytes(double(RunState::bytes_for(c, 1))));
    if (o->ctx > 0)
      fmt::print("; {} at --ctx {}", human_bytes(double(RunState::bytes_for(c, o->ctx))), o->ctx);
    fmt::print("\n");
    double target_bpw = 0;
    // A sensitivity allocation gives each layer its own target (compression.allocation.layers).
    std::map<std::string, double> layer_target_bpw;
    if (!bundle.compression_json.empty()) {
      fmt::print("compression:  {}\n", bundle.compression_json);
      const auto details = nlohmann::json::parse(bundle.compression_json, nullptr, false);
      if (details.is_object() && details.contains("target_bpw") &&
          details["target_bpw"].is_number())
        target_bpw = details["target_bpw"].get<double>();
      if (details.is_object() && details.contains("allocation") &&
          details["allocation"].is_object() && details["allocation"].contains("layers") &&
          details["allocation"]["layers"].is_array())
        for (const auto& layer : details["allocation"]["layers"])
          if (layer.is_object() && layer.contains("layer") && layer["layer"].is_string() &&
              layer.contains("target_bpw") && layer["target_bpw"].is_number())
            layer_target_bpw[layer["layer"].get<std::string>()] =
                layer["target_bpw"].get<double>();
    }
    fmt::print("\n");

    struct Totals {
      int64_t tensors = 0, params = 0, bytes = 0;
      std::set<std::string> types;
    };
    std::map<std::string, Totals> by_kind;
    Totals all, linear;
    for (const StoredTensor& t : bundle.inventory) {
      for (Totals* totals : {&by_kind[t.kind], &all}) {
        totals->tensors++;
        totals->params += t.params;
        totals->bytes += t.bytes;
        totals->types.insert(t.type);
      }
      if (t.kind == "attention" || t.kind == "mlp") {
        linear.tensors++;
        linear.params += t.params;
        linear.bytes += t.bytes;
        linear.types.insert(t.type);
      }
    }
    auto row = [](const std::string& name, const Totals& t) {
      fmt::print("{:<16} {:>7} {:>11} {:>12} {:>8.3f}  {}\n", name, t.tensors,
                 human_count(t.params), human_bytes(t.bytes),
                 t.params ? 8.0 * t.bytes / t.params : 0.0, fmt::join(t.types, ","));
    };
    fmt::print("{:<16} {:>7} {:>11} {:>12} {:>8}  {}\n", "kind", "tensors", "params", "bytes",
               "bits/w", "types");
    for (const auto& [kind, totals] : by_kind) row(kind, totals);
    row("linear layers", linear);
    row("total", all);
    // Bits per parameter of the model as a user ships it: every stored tensor over the model's
    // parameters, a tied embedding/head counted once (as transformers counts them), so that a
    // head stored twice shows up as extra bits rather than extra parameters.
    const LlamaConfig& mc = bundle.model->config();
    const bool head_stored_twice =
        mc.tie_word_embeddings && !bundle.model->weights().head_is_embedding();
    const int64_t model_params =
        all.params - (head_stored_twice ? mc.vocab_size * mc.hidden_size : 0);
    fmt::print(
        "whole file: {:.4f} bits/param ({} stored bits over {} parameters); linear layers alone "
        "{:.4f}\n",
        8.0 * all.bytes / double(model_params), 8 * all.bytes, model_params,
        linear.params ? 8.0 * linear.bytes / linear.params : 0.0);
    if (head_stored_twice)
      fmt::print("tied embedding and LM head are stored twice, in different formats ({} and {})\n",
                 bundle.model->weights().embedding->describe(),
                 bundle.model->weights().lm_head->describe());

    if (o->tensors || bundle.container != "huggingface") {
      fmt::print("\n{:<48} {:>10} {:>11} {:>8}  {}\n", "tensor", "type", "params", "bits/w",
                 "detail");
      // Formats sized by a target can overshoot it on small layers (formats/format_table.cpp says
      // why): mark those layers.
      std::map<std::string_view, int64_t> over_target;  // by reason
      for (const StoredTensor& t : bundle.inventory) {
        const double bpw = t.params ? 8.0 * t.bytes / t.params : 0.0;
        const LinearFormat* format = t.detail.empty() ? nullptr : find_linear_format(t.type);
        const auto allocated = layer_target_bpw.find(t.name);
        const double target = allocated != layer_target_bpw.end() ? allocated->second : target_bpw;
        const bool over = target > 0 && format && !format->over_target_reason.empty() &&
                          bpw > target * format->over_target_slack;
        if (over) over_target[format->over_target_reason]++;
        fmt::print("{:<48} {:>10} {:>11} {:>8.3f}  {}{}\n", t.name, t.type, human_count(t.params),
                   bpw, t.detail,
                   over ? fmt::format("  [over target: {}]", format->over_target_reason) : "");
      }
      for (const auto& [reason, layers] : over_target)
        if (layer_target_bpw.empty())
          fmt::print("\n{} layers exceed the {:.3f} bpw target because of the {}\n", layers,
                     target_bpw, reason);
        else
          fmt::print("\n{} layers exceed their allocated targets because of the {}\n", layers,
                     reason);
    }
    return 0;
  };
}

}  // namespace subbit::cli
