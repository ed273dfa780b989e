#pragma once
// `subbit compress`: load a Hugging Face model, compress every linear layer of every block with
// the chosen method, optionally train (QAT), and write one subbit model file.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "compress/littlebit.h"
#include "compress/qat.h"
#include "formats/sketch.h"

namespace subbit::compress {

struct CompressOptions {
  std::string method = "littlebit";  // littlebit, sketch, sign, rtn
  double bpw = 1.0;                  // littlebit / sketch target bits per weight
  int rtn_bits = 4;                  // rtn code width
  bool residual = true;              // littlebit residual path
  int64_t rank_granularity = 8;
  SignSurrogate surrogate = SignSurrogate::Tanh;
  double alpha = 100.0;
  // sketch
  int sketch_rows = 2;
  int sketch_block = 16;
  int sketch_value_bits = 4;
  std::string sketch_rule = "absmaxmin";
  double salient_fraction = 0.0;
  int64_t sketch_band_buckets = kSketchBandBuckets;  // 0: one band (plain hashing)
  std::filesystem::path calib_text;  // saliency statistics (empty: weight magnitude only)
  int64_t calib_tokens = 32768;
  uint64_t sketch_seed = 0x5EED;
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

CompressReport compress_model(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                              const CompressOptions& options, const CompressCallbacks& callbacks);

}  // namespace subbit::compress
