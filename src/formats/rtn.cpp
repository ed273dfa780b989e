#include "formats/rtn.h"

#include <algorithm>
#include <cmath>

#include "common/bit_stream.h"
#include "common/dtype.h"
#include "common/error.h"
#include "formats/tensor_io.h"
#include "ops/parallel.h"
#include "ops/vector_ops.h"

namespace subbit {

RtnLinear::RtnLinear(int64_t d_out, int64_t d_in, int bits, std::vector<uint64_t> codes,
                     std::vector<float> scales, std::vector<float> minimums)
    : d_out_(d_out),
      d_in_(d_in),
      bits_(bits),
      codes_(std::move(codes)),
      scales_(std::move(scales)),
      minimums_(std::move(minimums)) {
  if (bits < 1 || bits > 8) fail("rtn: {} bits per weight is not supported (1..8)", bits);
}

std::unique_ptr<RtnLinear> RtnLinear::encode(const float* w, int64_t d_out, int64_t d_in,
                                             int bits) {
  const int64_t groups = (d_in + kGroup - 1) / kGroup;
  const float levels = float((int64_t{1} << bits) - 1);
  std::vector<float> scales(d_out * groups), minimums(d_out * groups);
  for (int64_t r = 0; r < d_out; ++r) {
    const float* row = w + r * d_in;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * kGroup, end = std::min(d_in, begin + kGroup);
      const auto [lo, hi] = std::minmax_element(row + begin, row + end);
      const float minimum = round_f16(*lo);
      // Floor at fp16's smallest subnormal: a smaller floor rounds to a zero scale, and a
      // constant group would then divide 0 by 0.
      scales[r * groups + g] = round_f16(std::max((*hi - minimum) / levels, 0x1p-24f));
      minimums[r * groups + g] = minimum;
    }
  }
  return encode_on_grid(w, d_out, d_in, bits, std::move(scales), std::move(minimums));
}

std::unique_ptr<RtnLinear> RtnLinear::encode_on_grid(const float* w, int64_t d_out, int64_t d_in,
                                                     int bits, std::vector<float> scales,
                                                     std::vector<float> minimums) {
  auto layer = std::make_unique<RtnLinear>(d_out, d_in, bits, std::vector<uint64_t>{},
                                           std::move(scales), std::move(minimums));
  const int64_t groups = layer->groups_per_row(), words = layer->words_per_row();
  if (int64_t(layer->scales_.size()) != d_out * groups ||
      int64_t(layer->minimums_.size()) != d_out * groups)
    fail("rtn: a {} x {} grid needs {} scales and minimums", d_out, d_in, d_out * groups);
  const int64_t levels = (int64_t{1} << bits) - 1;
  layer->codes_.assign(d_out * words, 0);
  for (int64_t r = 0; r < d_out; ++r)
    for (int64_t i = 0; i < d_in; ++i) {
      const int64_t g = r * groups + i / kGroup;
      const float minimum = layer->minimums_[g], scale = layer->scales_[g];
      const uint64_t q = uint64_t(
          std::clamp<int64_t>(std::lround((w[r * d_in + i] - minimum) / scale), 0, levels));
      put_bits(&layer->codes_[r * words], i, bits, q);
    }
  return layer;
}

void RtnLinear::decode_row(int64_t r, float* out) const {
  const int64_t groups = groups_per_row(), words = words_per_row();
  const uint64_t* row = codes_.data() + r * words;
  for (int64_t i = 0; i < d_in_; ++i) {
    const int64_t g = r * groups + i / kGroup;
    out[i] = minimums_[g] + float(get_bits(row, i, bits_)) * scales_[g];
  }
}

void RtnLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  // About four chunks per thread, each decoding its rows into its own slice of the scratch.
  const int64_t rows_per_chunk =
      std::max<int64_t>(16, (d_out_ + 4 * num_threads() - 1) / (4 * num_threads()));
  const int64_t chunks = (d_out_ + rows_per_chunk - 1) / rows_per_chunk;
  float* decoded = scratch.floats(0, chunks * d_in_);  // (chunks, d_in)
  parallel_for(d_out_, rows_per_chunk, [&](int64_t begin, int64_t end) {
    float* row = decoded + begin / rows_per_chunk * d_in_;
    for (int64_t r = begin; r < end; ++r) {
      decode_row(r, row);
      for (int64_t t = 0; t < tokens; ++t) y[t * d_out_ + r] = dot(row, x + t * d_in_, d_in_);
    }
  });
}

std::string RtnLinear::describe() const {
  return "rtn " + std::to_string(bits_) + "-bit, group " + std::to_string(kGroup);
}

int64_t RtnLinear::storage_bits() const {
  return d_out_ * (words_per_row() * 64 + groups_per_row() * 32);
}

void RtnLinear::save(GgufWriter& out, const std::string& prefix) const {
  put_words(out, prefix + ".codes", codes_, d_out_);
  put_f16(out, prefix + ".scale", scales_);
  put_f16(out, prefix + ".min", minimums_);
  out.set("subbit.rtn." + prefix + ".bits", int64_t{bits_});
}

std::unique_ptr<Linear> RtnLinear::load(const GgufFile& file, const std::string& prefix,
                                        int64_t d_out, int64_t d_in) {
  const int64_t bits = file.get_int("subbit.rtn." + prefix + ".bits");
  if (bits < 1 || bits > 8)
    fail("{}: {}: rtn with {} bits is not supported", file.path().string(), prefix, bits);
  auto layer = std::make_unique<RtnLinear>(d_out, d_in, int(bits), std::vector<uint64_t>{},
                                           std::vector<float>{}, std::vector<float>{});
  layer->codes_ = get_words(file, prefix + ".codes", d_out, layer->words_per_row());
  layer->scales_ = get_f16(file, prefix + ".scale", d_out * layer->groups_per_row());
  layer->minimums_ = get_f16(file, prefix + ".min", d_out * layer->groups_per_row());
  return layer;
}

}  // namespace subbit
