#pragma once
// How `subbit compress` builds each weight format: one row per method, keyed by the name of the
// format it writes (formats/format_table.cpp). A row's method object owns the method's options:
// it declares them on the command line with their defaults, validates them, records them in the
// file, and builds every linear layer, either by encoding the original weights once
// (EncodingMethod: post-training only) or as a trainable module that QAT can refine
// (TrainableMethod). Adding a method = one class and one row in methods.cpp (docs/formats.md).
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>

#include "compress/torch_llama.h"
#include "formats/linear.h"
#include "model/loader.h"

namespace subbit::compress {

// One linear layer of the model being compressed.
struct LayerToCompress {
  int64_t block;      // 0 .. num_layers − 1, or kOutsideBlocks (embedding, LM head)
  int index;          // in LlamaLayer order: q, k, v, o, gate, up, down; or an OutsideTensor
  double target_bpw;  // --bpw (read only by methods whose row says targets_bpw)
  // The embedding/head's rows are tokens: each token's count in the frequency text plus one, for
  // methods that ask for it (needs_token_counts); empty otherwise. (n_out)
  std::span<const double> row_importance = {};
};

class CompressMethod {
 public:
  virtual ~CompressMethod() = default;
  // Adds this method's options to `group`, bound to this object; their defaults are shown.
  virtual void add_options(CLI::App& group) = 0;
  // Throws Error naming the option whose value is unusable. Runs before the model is loaded.
  virtual void validate() const {}
  // Runs once on the loaded original model before any layer is built (e.g. calibration), and
  // adds what it did to the file's compression details.
  virtual void prepare(ModelBundle& original, const std::function<void(const std::string&)>& log,
                       nlohmann::json& details) {}
  // Adds the options that shaped the layers to the file's compression details.
  virtual void record(nlohmann::json& details) const {}
  // Whether building the embedding/head needs LayerToCompress::row_importance (token counts).
  virtual bool needs_token_counts() const { return false; }
  // The bits per weight an (n_out, n_in) layer built for `target_bpw` is stored at (methods sized
  // by --bpw): what the whole-file budget adds up before any layer is built. A rank or table size
  // rounds, and a minimum size may overshoot small targets.
  virtual double stored_bpw(int64_t n_out, int64_t n_in, double target_bpw) const {
    return target_bpw;
  }
  double stored_bits(int64_t n_out, int64_t n_in, double target_bpw) const {
    return stored_bpw(n_out, n_in, target_bpw) * double(n_out * n_in);
  }
};

// Post-training only: each layer is encoded from its original fp32 weights.
class EncodingMethod : public CompressMethod {
 public:
  virtual std::unique_ptr<Linear> encode(const float* w /* (n_out, n_in) */, int64_t n_out,
                                         int64_t n_in, const LayerToCompress& layer) const = 0;
};

// LayerToCompress::block of the tensors outside the blocks; their index is one of these.
inline constexpr int64_t kOutsideBlocks = -1;
enum OutsideTensor : int { kEmbeddingTensor, kHeadTensor };

// Each layer becomes a trainable module (initialised from the original weights) that deploys as
// the format's runtime layer; QAT trains it when --train-tokens is given.
class TrainableMethod : public CompressMethod {
 public:
  virtual std::shared_ptr<TrainableLinear> make_trainable(
      const torch::Tensor& w /* (n_out, n_in) */, const LayerToCompress& layer) const = 0;
};

struct CompressMethodRow {
  std::string_view
      name;  // --method, and the weight format written (a formats/format_table.cpp row)
  std::string_view summary;  // one line for `subbit compress --help`
  bool targets_bpw;          // sized by --bpw (validated, and recorded as target_bpw)
  std::string_view built;    // the log line after each block: "<built> block 3/6"
  std::unique_ptr<CompressMethod> (*make)();  // the method with its default options
  // The option that the number of a tensor type names (`--head-type rtn:3` is --bits 3); empty
  // for methods sized by --bpw (the number is the bpw) and for methods without a number.
  std::string_view type_number_option = {};
};

std::span<const CompressMethodRow> compress_methods();
// Throws Error listing every method when no row has this name.
const CompressMethodRow& find_compress_method(std::string_view name);
// "littlebit, sketch, ...": every row's name, for help and error messages.
std::string compress_method_names(std::string_view separator = ", ");

}  // namespace subbit::compress
