#pragma once
// `subbit compress`: load a Hugging Face model, compress every linear layer of every block with
// the chosen method, optionally train (QAT), and write one subbit model file.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "compress/methods.h"
#include "compress/qat.h"

namespace subbit::compress {

struct CompressOptions {
  std::string method = "littlebit";  // a row of compress/methods.cpp
  double bpw = 1.0;                  // target bits per weight, for methods sized by it
  // "linear": --bpw is the linear layers' target; "whole": every stored bit of the file over
  // every parameter (docs/formats.md, "Whole-file budget").
  std::string budget = "linear";
  std::string embed_type;  // compress/tensor_types.h; empty: as stored (a whole budget: --method)
  std::string
      head_type;  // empty: a tied head follows the embedding, an untied one as embed_type's default
  std::vector<std::filesystem::path> train_texts;
  // "uniform": every linear layer at one target; "sensitivity": targets by measured KL
  // (compress/sensitivity.h) at the bits uniform stores, from sensitivity_texts (default: the
  // training texts).
  std::string allocate = "uniform";
  std::vector<std::filesystem::path> sensitivity_texts;
  int64_t sensitivity_tokens = 4096;
  // Tokens of sensitivity_texts (default: the training texts) whose counts size an embedding/head
  // whose method asks for them (rtn with a fractional --bits: widths by token frequency).
  int64_t frequency_tokens = int64_t{1} << 20;
  QatOptions qat;  // qat.train_tokens == 0: post-training only
  // Post-training: the folder of per-block checkpoints (compress/block_checkpoint.h); empty: none.
  std::filesystem::path block_checkpoint;
};

struct LayerReport {
  std::string name;
  int64_t n_out, n_in;
  std::string detail;
  double bpw;
  double target_bpw;  // what the layer was sized for (uniform, or its allocated share)
};

struct CompressReport {
  std::vector<LayerReport> layers;
  int64_t linear_params = 0, linear_bits = 0;
  double linear_target_bpw = 0;  // --bpw, or what a whole-file budget left the linear layers
  int64_t whole_params = 0, whole_bits = 0;  // every parameter (tied: once), every stored bit
  std::string embedding, head;               // how they are stored
  QatResult qat;
  bool trained = false;
};

// Building the layers block by block: `done` of `total` blocks, 0 before the first.
struct BlockProgress {
  std::string what;  // the method row's verb, e.g. "Dual-SVID initialised"
  int64_t done, total;
};

struct CompressCallbacks {
  std::function<void(const std::string&)> log;               // one line of status
  std::function<void(const BlockProgress&)> block_progress;  // per block of layers built
  std::function<void(const QatProgress&)> qat_progress;      // per training step
};

// `method` is made by the row named options.method (find_compress_method(...).make()) and holds
// that method's own options.
CompressReport compress_model(const std::filesystem::path& model_dir,
                              const std::filesystem::path& out, const CompressOptions& options,
                              const std::shared_ptr<CompressMethod>& method,
                              const CompressCallbacks& callbacks);

}  // namespace subbit::compress
