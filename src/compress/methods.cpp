#include "compress/methods.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "common/error.h"
#include "compress/littlebit.h"
#include "compress/qat.h"
#include "compress/rtn.h"
#include "compress/sketch.h"
#include "formats/littlebit.h"
#include "formats/rtn.h"
#include "formats/sign.h"
#include "formats/sketch.h"
#include "model/calibration.h"

namespace subbit::compress {

namespace {

class LittleBitMethod final : public TrainableMethod {
 public:
  void add_options(CLI::App& group) override {
    group.add_flag_callback(
        "--no-residual", [this] { residual_ = false; }, "primary path only");
    group.add_option("--rank-granularity", rank_granularity_, "ranks are multiples of this")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    group
        .add_option("--surrogate", surrogate_,
                    "sign gradient: tanh (alpha) | ste (clipped) | frozen (signs keep their "
                    "initial values)")
        ->capture_default_str();
    group.add_option("--alpha", alpha_, "tanh surrogate sharpness")->capture_default_str();
    group
        .add_option("--svd", svd_method_,
                    "Dual-SVID's SVD: exact | gram (Gram-matrix eigendecomposition) | randomized | "
                    "auto (exact below 1024 wide, gram below 3072, randomized above)")
        ->capture_default_str();
    group
        .add_option("--svd-oversample", svd_.oversample,
                    "randomized SVD: random directions beyond the rank")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{0}, int64_t{4096}));
    group
        .add_option("--svd-iterations", svd_.power_iterations,
                    "randomized SVD: subspace iterations")
        ->capture_default_str()
        ->check(CLI::Range(0, 64));
  }
  void validate() const override {
    surrogate();
    parse_svd_method(svd_method_, "--svd");
  }
  void record(nlohmann::json& details) const override {
    details["residual"] = residual_;
    details["rank_granularity"] = rank_granularity_;
    details["svd"] = {{"method", svd_method_},
                      {"oversample", svd_.oversample},
                      {"iterations", svd_.power_iterations}};
  }
  std::shared_ptr<TrainableLinear> make_trainable(const torch::Tensor& w,
                                                  const LayerToCompress& layer) const override {
    TruncatedSvdOptions svd = svd_;
    svd.method = parse_svd_method(svd_method_, "--svd");
    return std::make_shared<LittleBitTrainable>(w, rank(w.size(0), w.size(1), layer.target_bpw),
                                                residual_, surrogate(), alpha_, svd);
  }
  double stored_bpw(int64_t n_out, int64_t n_in, double target_bpw) const override {
    return littlebit_bpw(n_in, n_out, rank(n_out, n_in, target_bpw), paths());
  }

 private:
  SignSurrogate surrogate() const {
    if (surrogate_ == "tanh") return SignSurrogate::Tanh;
    if (surrogate_ == "ste") return SignSurrogate::ClippedSte;
    if (surrogate_ == "frozen") return SignSurrogate::Frozen;
    fail("--surrogate must be tanh, ste or frozen, got \"{}\"", surrogate_);
  }

  int paths() const { return residual_ ? 2 : 1; }
  int64_t rank(int64_t n_out, int64_t n_in, double target_bpw) const {
    return littlebit_rank_for_bpw(n_in, n_out, target_bpw, paths(), rank_granularity_);
  }

  bool residual_ = true;
  int64_t rank_granularity_ = 8;
  std::string surrogate_ = "tanh";
  double alpha_ = 100.0;
  std::string svd_method_ = svd_method_name(TruncatedSvdOptions{}.method);
  TruncatedSvdOptions svd_;
};

class SketchMethod final : public TrainableMethod {
 public:
  void add_options(CLI::App& group) override {
    group.add_option("--rows", rows_, "hash rows")->capture_default_str()->check(CLI::Range(1, 4));
    group.add_option("--block", block_, "weights per hashed block")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    group.add_option("--value-bits", value_bits_, "bits per table value (2..8, or 16 = fp16)")
        ->capture_default_str();
    group.add_option("--rule", rule_, "absmaxmin | absminmax (the paper's) | mean")
        ->capture_default_str();
    group
        .add_option("--salient-frac", salient_fraction_,
                    "fraction of blocks given more table space")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 0.5));
    group
        .add_option("--band-buckets", band_buckets_,
                    "buckets per row band and table (0: one band, plain hashing)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 32));
    group.add_option("--sketch-seed", seed_, "hash seed")->capture_default_str();
    group
        .add_option("--hash-version", hash_version_,
                    "2: 32-bit hashes, faster; 1: what builds before it read")
        ->capture_default_str()
        ->check(CLI::Range(1, 2));
    group.add_option("--calib-text", calib_text_,
                     "text for saliency statistics (never wiki.test.raw)");
    group.add_option("--calib-tokens", calib_tokens_, "calibration tokens")->capture_default_str();
  }
  void validate() const override { parse_sketch_rule(rule_); }
  void prepare(ModelBundle& original, const std::function<void(const std::string&)>& log,
               nlohmann::json& details) override {
    if (calib_text_.empty()) return;  // saliency from weight magnitude only
    const std::filesystem::path text = calib_text_;
    const std::vector<int32_t> calib =
        load_training_tokens({text}, *original.tokenizer, calib_tokens_);
    column_rms_ = collect_column_rms(*original.model, calib, 512);
    log(fmt::format("calibrated on {} tokens of {}", calib.size(), text.filename().string()));
    details["calibration"] = {{"text", text.filename().string()}, {"tokens", calib.size()}};
  }
  void record(nlohmann::json& details) const override {
    details["rule"] = rule_;
    details["rows"] = rows_;
    details["block"] = block_;
    details["value_bits"] = value_bits_;
    details["salient_fraction"] = salient_fraction_;
    details["band_buckets"] = band_buckets_;
    details["hash_version"] = hash_version_;
  }
  std::shared_ptr<TrainableLinear> make_trainable(const torch::Tensor& w,
                                                  const LayerToCompress& layer) const override {
    const int64_t n_out = w.size(0), n_in = w.size(1);
    SketchParams params = params_for(n_out, n_in, layer.target_bpw);
    params.rule = parse_sketch_rule(rule_);
    params.hash_version = hash_version_;
    // Every layer hashes with its own seeds (the embedding and head: seeds below the blocks').
    params.seed = seed_ + uint64_t(layer.block * kLinearsPerBlock + layer.index);
    // Calibration observes the blocks' linear inputs only.
    const bool calibrated = !column_rms_.empty() && layer.block != kOutsideBlocks;
    const auto encoded =
        SketchLinear::encode(w.data_ptr<float>(), n_out, n_in, params,
                             calibrated ? column_rms_[layer.block][layer.index].data() : nullptr);
    return std::make_shared<SketchTrainable>(*encoded);
  }
  double stored_bpw(int64_t n_out, int64_t n_in, double target_bpw) const override {
    return double(sketch_storage_bits(n_out, n_in, params_for(n_out, n_in, target_bpw))) /
           double(n_out * n_in);
  }

 private:
  SketchParams params_for(int64_t n_out, int64_t n_in, double target_bpw) const {
    return sketch_params_for_bpw(n_out, n_in, target_bpw, rows_, block_, value_bits_,
                                 salient_fraction_, band_buckets_);
  }

  int rows_ = 2;
  int block_ = kSketchDefaultBlock;
  int value_bits_ = 4;
  std::string rule_ = "absmaxmin";
  double salient_fraction_ = 0.0;
  int64_t band_buckets_ = kSketchBandBuckets;  // 0: one band (plain hashing)
  uint64_t seed_ = 0x5EED;
  int hash_version_ = kSketchHashVersion;
  std::string calib_text_;  // empty: no calibration
  int64_t calib_tokens_ = 32768;
  ColumnRms column_rms_;  // from prepare(); empty without calibration
};

class SignMethod final : public EncodingMethod {
 public:
  void add_options(CLI::App&) override {}
  std::unique_ptr<Linear> encode(const float* w, int64_t n_out, int64_t n_in,
                                 const LayerToCompress&) const override {
    return SignLinear::encode(w, n_out, n_in);
  }
};

class RtnMethod final : public TrainableMethod {
 public:
  void add_options(CLI::App& group) override {
    group
        .add_option("--bits", bits_,
                    "bits per code (2..8); a fraction (embedding/head only) is a mean, each "
                    "token's row getting 2..8 bits by its frequency in the training text")
        ->capture_default_str();
  }
  void validate() const override {
    if (bits_ < RtnLinear::kMinAllocatedBits || bits_ > RtnLinear::kMaxBits)
      fail("--bits must be 2..8 for rtn, got {}", bits_);
  }
  void record(nlohmann::json& details) const override { details["bits"] = bits_; }
  bool needs_token_counts() const override { return per_row(); }
  // Without QAT, to_runtime() is RtnLinear::encode of the original weights.
  std::shared_ptr<TrainableLinear> make_trainable(const torch::Tensor& w,
                                                  const LayerToCompress& layer) const override {
    if (!per_row()) return std::make_shared<RtnTrainable>(w, int(bits_));
    if (layer.block != kOutsideBlocks || layer.row_importance.empty())
      fail(
          "rtn --bits {}: widths by token frequency apply to the embedding and head only (give "
          "the linear layers a whole number of bits)",
          bits_);
    const torch::Tensor c = w.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    return std::make_shared<RtnTrainable>(
        w, RtnLinear::allocate_row_bits(c.data_ptr<float>(), c.size(0), c.size(1),
                                        layer.row_importance, bits_));
  }

 private:
  bool per_row() const { return bits_ != std::floor(bits_); }

  double bits_ = 4;
};

template <class Method>
std::unique_ptr<CompressMethod> make() {
  return std::make_unique<Method>();
}

constexpr CompressMethodRow kMethods[] = {
    {"littlebit", "LittleBit: binary factors with a residual path (Dual-SVID, QAT)", true,
     "Dual-SVID initialised", make<LittleBitMethod>},
    {"sketch", "UltraSketch: hashed value tables (docs/ultrasketch.md, QAT)", true, "sketched",
     make<SketchMethod>},
    {"sign", "1 bit per weight, fp16 row and column scales (post-training)", false, "encoded",
     make<SignMethod>},
    {"rtn", "group-wise round-to-nearest, group 128 (QAT: straight-through rounding)", false,
     "encoded", make<RtnMethod>, "--bits"},
};

}  // namespace

std::span<const CompressMethodRow> compress_methods() { return kMethods; }

const CompressMethodRow& find_compress_method(std::string_view name) {
  for (const CompressMethodRow& row : kMethods)
    if (row.name == name) return row;
  fail("unknown --method \"{}\" ({})", name, compress_method_names());
}

std::string compress_method_names(std::string_view separator) {
  std::vector<std::string_view> names;
  for (const CompressMethodRow& row : kMethods) names.push_back(row.name);
  return fmt::format("{}", fmt::join(names, separator));
}

}  // namespace subbit::compress
