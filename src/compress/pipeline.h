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
  std::vector<std::filesystem::path> train_texts;
  QatOptions qat;  // qat.train_tokens == 0: post-training only
};

struct LayerReport {
  std::string name;
  int64_t n_out, n_in;
  std::string detail;
  double bpw;
};

struct CompressReport {
  std::vector<LayerReport> layers;
  int64_t linear_params = 0, linear_bits = 0;
  QatResult qat;
  bool trained = false;
};

struct CompressCallbacks {
  std::function<void(const std::string&)> log;           // one line of status
  std::function<void(const QatProgress&)> qat_progress;  // per training step
};

// `method` is made by the row named options.method (find_compress_method(...).make()) and holds
// that method's own options.
CompressReport compress_model(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                              const CompressOptions& options, CompressMethod& method,
                              const CompressCallbacks& callbacks);

}  // namespace subbit::compress
