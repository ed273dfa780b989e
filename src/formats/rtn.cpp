#include "formats/rtn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <queue>

#include "common/bit_stream.h"
#include "common/dtype.h"
#include "common/error.h"
#include "formats/tensor_io.h"
#include "ops/parallel.h"
#include "ops/vector_ops.h"

namespace subbit {

namespace {

int64_t words_for(int64_t d_in, int bits) { return (d_in * bits + 63) / 64; }

// Codes 0..n−1 of a row's bitstream as floats. Eight B-bit codes are B whole bytes starting at
// byte 8·k·B/8 = k·B, so one unaligned 8-byte load holds them and constant shifts take them
// apart (get_bits's variable-width arithmetic per code made a 1B-shaped rtn:4 model 2.6x slower;
// docs/results.md). Reads up to 7 bytes past the row's last code: the codes buffer keeps a spare
// word after the last row.
template <int B>
void decode_codes(const uint64_t* row, int64_t n, float* out) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(row);
  constexpr uint64_t kMask = (uint64_t{1} << B) - 1;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t chunk;
    std::memcpy(&chunk, bytes + i / 8 * B, sizeof chunk);
    for (int j = 0; j < 8; ++j) out[i + j] = float((chunk >> (j * B)) & kMask);
  }
  for (; i < n; ++i) out[i] = float(get_bits(row, i, B));
}

void decode_codes(const uint64_t* row, int bits, int64_t n, float* out) {
  switch (bits) {
    case 1: return decode_codes<1>(row, n, out);
    case 2: return decode_codes<2>(row, n, out);
    case 3: return decode_codes<3>(row, n, out);
    case 4: return decode_codes<4>(row, n, out);
    case 5: return decode_codes<5>(row, n, out);
    case 6: return decode_codes<6>(row, n, out);
    case 7: return decode_codes<7>(row, n, out);
    default: return decode_codes<8>(row, n, out);
  }
}

}  // namespace

RtnLinear::RtnLinear(int64_t d_out, int64_t d_in, std::vector<uint8_t> row_bits,
                     std::vector<uint64_t> codes, std::vector<float> scales,
                     std::vector<float> minimums)
    : d_out_(d_out),
      d_in_(d_in),
      row_bits_(std::move(row_bits)),
      codes_(std::move(codes)),
      scales_(std::move(scales)),
      minimums_(std::move(minimums)) {
  if (row_bits_.size() == 1) row_bits_.assign(d_out, row_bits_[0]);
  if (int64_t(row_bits_.size()) != d_out)
    fail("rtn: {} row widths for {} rows", row_bits_.size(), d_out);
  for (const uint8_t bits : row_bits_)
    if (bits < 1 || bits > kMaxBits)
      fail("rtn: {} bits per weight is not supported (1..{})", bits, kMaxBits);
  lay_out_rows();
}

void RtnLinear::lay_out_rows() {
  row_offsets_.assign(d_out_ + 1, 0);
  for (int64_t r = 0; r < d_out_; ++r)
    row_offsets_[r + 1] = row_offsets_[r] + words_for(d_in_, row_bits_[r]);
}

bool RtnLinear::uniform() const {
  return std::all_of(row_bits_.begin(), row_bits_.end(),
                     [&](uint8_t b) { return b == row_bits_[0]; });
}

void RtnLinear::encoder_grid(const float* w, int64_t d_out, int64_t d_in,
                             std::span<const uint8_t> row_bits, std::vector<float>& scales,
                             std::vector<float>& minimums) {
  const int64_t groups = groups_for(d_in);
  scales.assign(d_out * groups, 0);
  minimums.assign(d_out * groups, 0);
  for (int64_t r = 0; r < d_out; ++r) {
    const float levels = float((int64_t{1} << row_bits[r]) - 1);
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
}

std::unique_ptr<RtnLinear> RtnLinear::encode(const float* w, int64_t d_out, int64_t d_in,
                                             int bits) {
  return encode(w, d_out, d_in, std::vector<uint8_t>(d_out, uint8_t(bits)));
}

std::unique_ptr<RtnLinear> RtnLinear::encode(const float* w, int64_t d_out, int64_t d_in,
                                             std::vector<uint8_t> row_bits) {
  std::vector<float> scales, minimums;
  encoder_grid(w, d_out, d_in, row_bits, scales, minimums);
  return encode_on_grid(w, d_out, d_in, std::move(row_bits), std::move(scales),
                        std::move(minimums));
}

std::unique_ptr<RtnLinear> RtnLinear::encode_on_grid(const float* w, int64_t d_out, int64_t d_in,
                                                     std::vector<uint8_t> row_bits,
                                                     std::vector<float> scales,
                                                     std::vector<float> minimums) {
  auto layer = std::make_unique<RtnLinear>(d_out, d_in, std::move(row_bits),
                                           std::vector<uint64_t>{}, std::move(scales),
                                           std::move(minimums));
  const int64_t groups = layer->groups_per_row();
  if (int64_t(layer->scales_.size()) != d_out * groups ||
      int64_t(layer->minimums_.size()) != d_out * groups)
    fail("rtn: a {} x {} grid needs {} scales and minimums", d_out, d_in, d_out * groups);
  layer->codes_.assign(layer->row_offsets_.back() + 1, 0);  // + decode_codes's spare word
  for (int64_t r = 0; r < d_out; ++r) {
    const int bits = layer->row_bits_[r];
    const int64_t levels = (int64_t{1} << bits) - 1;
    uint64_t* row = &layer->codes_[layer->row_offsets_[r]];
    for (int64_t i = 0; i < d_in; ++i) {
      const int64_t g = r * groups + i / kGroup;
      const float minimum = layer->minimums_[g], scale = layer->scales_[g];
      const uint64_t q = uint64_t(
          std::clamp<int64_t>(std::lround((w[r * d_in + i] - minimum) / scale), 0, levels));
      put_bits(row, i, bits, q);
    }
  }
  return layer;
}

std::vector<uint8_t> RtnLinear::allocate_row_bits(const float* w, int64_t d_out, int64_t d_in,
                                                  std::span<const double> importance,
                                                  double mean_bits) {
  if (int64_t(importance.size()) != d_out)
    fail("rtn: {} row importances for {} rows", importance.size(), d_out);
  if (!(mean_bits >= kMinAllocatedBits && mean_bits <= kMaxBits))
    fail("rtn: a mean of {} bits per row is outside {}..{}", mean_bits, kMinAllocatedBits,
         kMaxBits);
  // Σ_groups n_g · range_g² per row: the rounding error at b bits is this / (2^b − 1)² (up to
  // the constant 1/12 of uniform rounding), weighted by the row's importance.
  std::vector<double> spread(d_out, 0);  // (d_out)
  for (int64_t r = 0; r < d_out; ++r)
    for (int64_t begin = 0; begin < d_in; begin += kGroup) {
      const int64_t end = std::min(d_in, begin + kGroup);
      const auto [lo, hi] = std::minmax_element(w + r * d_in + begin, w + r * d_in + end);
      spread[r] += double(end - begin) * double(*hi - *lo) * double(*hi - *lo);
    }
  const auto error_at = [&](int64_t r, int bits) {
    const double levels = double((int64_t{1} << bits) - 1);
    return importance[r] * spread[r] / (levels * levels);
  };
  std::vector<uint8_t> bits(d_out, kMinAllocatedBits);
  // (error saved by one more bit, row); ties go to the lower row, so the result is deterministic.
  using Gain = std::pair<double, int64_t>;
  const auto less = [](const Gain& a, const Gain& b) {
    return a.first < b.first || (a.first == b.first && a.second > b.second);
  };
  std::priority_queue<Gain, std::vector<Gain>, decltype(less)> gains(less);
  for (int64_t r = 0; r < d_out; ++r)
    gains.push({error_at(r, kMinAllocatedBits) - error_at(r, kMinAllocatedBits + 1), r});
  for (int64_t extra =
           int64_t(std::floor((mean_bits - kMinAllocatedBits) * double(d_out) + 1e-9));
       extra > 0;
       --extra) {
    const int64_t r = gains.top().second;
    gains.pop();
    if (++bits[r] < kMaxBits) gains.push({error_at(r, bits[r]) - error_at(r, bits[r] + 1), r});
  }
  return bits;
}

void RtnLinear::decode_row(int64_t r, float* out) const {
  decode_codes(codes_.data() + row_offsets_[r], row_bits_[r], d_in_, out);
  const int64_t groups = groups_per_row();
  for (int64_t g = 0; g < groups; ++g) {
    const float minimum = minimums_[r * groups + g], scale = scales_[r * groups + g];
    for (int64_t i = g * kGroup; i < std::min(d_in_, (g + 1) * kGroup); ++i)
      out[i] = minimum + out[i] * scale;
  }
}

void RtnLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  // y[t, r] = Σ_g scale_g · (q_g · x_g) + minimum_g · Σ x_g: each row's codes are decoded once
  // for every token, and the inputs' group sums are shared by every row.
  const int64_t groups = groups_per_row();
  float* group_sums = scratch.floats(1, tokens * groups);  // (tokens, groups)
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * kGroup, end = std::min(d_in_, begin + kGroup);
      float sum = 0;
      for (int64_t i = begin; i < end; ++i) sum += x[t * d_in_ + i];
      group_sums[t * groups + g] = sum;
    }
  // About four chunks per thread, each decoding its rows into its own slice of the scratch.
  const int64_t rows_per_chunk =
      std::max<int64_t>(16, (d_out_ + 4 * num_threads() - 1) / (4 * num_threads()));
  const int64_t chunks = (d_out_ + rows_per_chunk - 1) / rows_per_chunk;
  float* decoded = scratch.floats(0, chunks * d_in_);  // (chunks, d_in)
  parallel_for(d_out_, rows_per_chunk, [&](int64_t begin, int64_t end) {
    float* codes = decoded + begin / rows_per_chunk * d_in_;
    for (int64_t r = begin; r < end; ++r) {
      decode_codes(codes_.data() + row_offsets_[r], row_bits_[r], d_in_, codes);
      const float* scale = scales_.data() + r * groups;
      const float* minimum = minimums_.data() + r * groups;
      for (int64_t t = 0; t < tokens; ++t) {
        float sum = 0;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = g * kGroup, n = std::min(kGroup, d_in_ - at);
          sum += scale[g] * dot(codes + at, x + t * d_in_ + at, n) +
                 minimum[g] * group_sums[t * groups + g];
        }
        y[t * d_out_ + r] = sum;
      }
    }
  });
}

std::string RtnLinear::describe() const {
  if (uniform())
    return "rtn " + std::to_string(row_bits_.empty() ? 0 : row_bits_[0]) + "-bit, group " +
           std::to_string(kGroup);
  const auto [lo, hi] = std::minmax_element(row_bits_.begin(), row_bits_.end());
  const double mean =
      double(std::accumulate(row_bits_.begin(), row_bits_.end(), int64_t{0})) / double(d_out_);
  char text[96];
  std::snprintf(text, sizeof text, "rtn %d-%d bits by row (mean %.2f), group %lld", int(*lo),
                int(*hi), mean, static_cast<long long>(kGroup));
  return text;
}

int64_t RtnLinear::storage_bits() const {
  return row_offsets_.back() * 64 + d_out_ * groups_per_row() * 32 + (uniform() ? 0 : 8 * d_out_);
}

void RtnLinear::save(GgufWriter& out, const std::string& prefix) const {
  const std::vector<uint64_t> stored(codes_.begin(), codes_.end() - 1);  // no spare word
  put_f16(out, prefix + ".scale", scales_);
  put_f16(out, prefix + ".min", minimums_);
  if (uniform()) {
    put_words(out, prefix + ".codes", stored, d_out_);
    out.set("subbit.rtn." + prefix + ".bits", int64_t{row_bits_.empty() ? 1 : row_bits_[0]});
    return;
  }
  // Widths per row: bits 0 in the metadata, the widths in `.row_bits`, the rows' words in one run.
  put_words(out, prefix + ".codes", stored, 1);
  out.add_tensor(prefix + ".row_bits", GgmlType::I8, {d_out_},
                 std::vector<uint8_t>(row_bits_.begin(), row_bits_.end()));
  out.set("subbit.rtn." + prefix + ".bits", int64_t{0});
}

std::unique_ptr<Linear> RtnLinear::load(const GgufFile& file, const std::string& prefix,
                                        int64_t d_out, int64_t d_in) {
  const int64_t bits = file.get_int("subbit.rtn." + prefix + ".bits");
  if (bits < 0 || bits > kMaxBits)
    fail("{}: {}: rtn with {} bits is not supported", file.path().string(), prefix, bits);
  std::vector<uint8_t> row_bits(d_out, uint8_t(bits));
  if (bits == 0) {
    const GgufTensor& t = expect_tensor(file, prefix + ".row_bits", GgmlType::I8, {d_out});
    std::memcpy(row_bits.data(), t.data, size_t(d_out));
    for (int64_t r = 0; r < d_out; ++r)
      if (row_bits[r] < 1 || row_bits[r] > kMaxBits)
        fail("{}: {}: row {} has {} bits (rtn rows have 1..{})", file.path().string(), prefix, r,
             row_bits[r], kMaxBits);
  }
  auto layer = std::make_unique<RtnLinear>(d_out, d_in, std::move(row_bits),
                                           std::vector<uint64_t>{}, std::vector<float>{},
                                           std::vector<float>{});
  const int64_t words = layer->row_offsets_.back();
  layer->codes_ = bits == 0 ? get_words(file, prefix + ".codes", 1, words)
                            : get_words(file, prefix + ".codes", d_out, words / std::max<int64_t>(d_out, 1));
  layer->codes_.push_back(0);  // decode_codes's spare word
  layer->scales_ = get_f16(file, prefix + ".scale", d_out * layer->groups_per_row());
  layer->minimums_ = get_f16(file, prefix + ".min", d_out * layer->groups_per_row());
  return layer;
}

}  // namespace subbit
