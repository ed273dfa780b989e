// subbit export FILE -o DIR: the dequantized model as a Hugging Face checkpoint.
#include <fmt/format.h>

#include "cli/commands.h"
#include "model/export.h"

namespace subbit::cli {

Action add_export_command(CLI::App& app) {
  struct Options {
    std::string model, out;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "export", "write a model as a Hugging Face checkpoint (bf16, dequantized)");
  cmd->add_option("model", o->model, "subbit model file or model directory")->required();
  cmd->add_option("-o,--output", o->out, "output folder (must not exist or be empty)")->required();
  return [o] {
    ModelBundle bundle = load_model(o->model);
    export_hf_checkpoint(bundle, o->out);
    fmt::print("wrote {} (config.json, model.safetensors, tokenizer.json)\n", o->out);
    return 0;
  };
}

}  // namespace subbit::cli
