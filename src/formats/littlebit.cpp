#include "formats/littlebit.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"
#include "ops/sign_matmul.h"

namespace subbit {

int64_t littlebit_bits(int64_t d_in, int64_t d_out, int64_t rank, int paths) {
  return paths * (rank * (d_in + d_out) + 16 * (d_in + d_out + rank));
}

double littlebit_bpw(int64_t d_in, int64_t d_out, int64_t rank, int paths) {
  return double(littlebit_bits(d_in, d_out, rank, paths)) / double(d_in * d_out);
}

int64_t littlebit_rank_for_bpw(int64_t d_in, int64_t d_out, double target_bpw, int paths,
                               int64_t granularity) {
  const double budget = target_bpw * double(d_in) * double(d_out) - paths * 16.0 * double(d_in + d_out);
  const double per_rank = paths * double(d_in + d_out + 16);
  const int64_t rank = budget > 0 ? int64_t(budget / per_rank) / granularity * granularity : 0;
  return std::clamp<int64_t>(rank, granularity, std::min(d_in, d_out));
}

LittleBitLinear::LittleBitLinear(int64_t d_out, int64_t d_in, std::vector<LittleBitPath> paths)
    : d_out_(d_out), d_in_(d_in), paths_(std::move(paths)) {
  for (const LittleBitPath& p : paths_) {
    if (int64_t(p.h.size()) != d_out || int64_t(p.g.size()) != d_in || int64_t(p.l.size()) != p.rank ||
        int64_t(p.u_signs.size()) != d_out * sign_words_per_row(p.rank) ||
        int64_t(p.vt_signs.size()) != p.rank * sign_words_per_row(d_in))
      fail("littlebit layer ({} x {}): inconsistent path of rank {}", d_out, d_in, p.rank);
    blocks_.push_back({sign_blocks({p.u_signs.data(), d_out, p.rank}),
                       sign_blocks({p.vt_signs.data(), p.rank, d_in})});
  }
}

void LittleBitLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  float* scaled = scratch.floats(0, tokens * d_in_);     // (tokens, d_in): g ⊙ x
  float* path_out = scratch.floats(1, tokens * d_out_);  // (tokens, d_out)
  std::fill(y, y + tokens * d_out_, 0.0f);
  for (size_t k = 0; k < paths_.size(); ++k) {
    const LittleBitPath& p = paths_[k];
    float* latent = scratch.floats(2, tokens * p.rank);  // (tokens, rank)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t i = 0; i < d_in_; ++i) scaled[t * d_in_ + i] = x[t * d_in_ + i] * p.g[i];
    sign_matmul({p.vt_signs.data(), p.rank, d_in_, blocks_[k].vt.data()}, scaled, latent, tokens);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < p.rank; ++j) latent[t * p.rank + j] *= p.l[j];
    sign_matmul({p.u_signs.data(), d_out_, p.rank, blocks_[k].u.data()}, latent, path_out, tokens);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t o = 0; o < d_out_; ++o) y[t * d_out_ + o] += p.h[o] * path_out[t * d_out_ + o];
  }
}

void LittleBitLinear::dequantize(float* w) const {
  std::fill(w, w + d_out_ * d_in_, 0.0f);
  for (const LittleBitPath& p : paths_) {
    std::vector<float> u(d_out_ * p.rank), vt(p.rank * d_in_);
    unpack_signs({p.u_signs.data(), d_out_, p.rank}, u.data());
    unpack_signs({p.vt_signs.data(), p.rank, d_in_}, vt.data());
    for (int64_t o = 0; o < d_out_; ++o)
      for (int64_t j = 0; j < p.rank; ++j) {
        const float a = p.h[o] * u[o * p.rank + j] * p.l[j];
        float* row = w + o * d_in_;
        for (int64_t i = 0; i < d_in_; ++i) row[i] += a * vt[j * d_in_ + i] * p.g[i];
      }
  }
}

// Row o of Σ_paths diag(h)·sign(U)·diag(l)·sign(V)ᵀ·diag(g): r·d_in operations, so an embedding
// in this format costs a rank-r product per looked-up token.
void LittleBitLinear::decode_row(int64_t o, float* out) const {
  std::fill(out, out + d_in_, 0.0f);
  for (const LittleBitPath& p : paths_) {
    const SignMatrix u{p.u_signs.data(), d_out_, p.rank}, vt{p.vt_signs.data(), p.rank, d_in_};
    const uint64_t* u_row = u.words + o * u.words_per_row();
    for (int64_t j = 0; j < p.rank; ++j) {
      const float u_sign = (u_row[j / 64] >> (j % 64)) & 1 ? 1.0f : -1.0f;
      const float a = p.h[o] * u_sign * p.l[j];
      const uint64_t* v_row = vt.words + j * vt.words_per_row();
      for (int64_t i = 0; i < d_in_; ++i) out[i] += ((v_row[i / 64] >> (i % 64)) & 1 ? a : -a) * p.g[i];
    }
  }
}

int64_t LittleBitLinear::storage_bits() const {
  int64_t bits = 0;
  for (const LittleBitPath& p : paths_) bits += littlebit_bits(d_in_, d_out_, p.rank, 1);
  return bits;
}

std::string LittleBitLinear::describe() const {
  std::vector<int64_t> ranks;
  for (const LittleBitPath& p : paths_) ranks.push_back(p.rank);
  return fmt::format("rank {} ({} path{})", fmt::join(ranks, "+"), paths_.size(),
                     paths_.size() == 1 ? "" : "s");
}

}  // namespace subbit

#include "formats/tensor_io.h"

namespace subbit {

// Tensors per path p: prefix.lb{p}.u (d_out, rank) and .vt (rank, d_in) sign bits, .h .g .l fp16.
void LittleBitLinear::save(GgufWriter& out, const std::string& prefix) const {
  std::vector<int64_t> ranks;
  for (size_t i = 0; i < paths_.size(); ++i) {
    const LittleBitPath& p = paths_[i];
    const std::string name = fmt::format("{}.lb{}", prefix, i);
    put_words(out, name + ".u", p.u_signs, d_out_);
    put_words(out, name + ".vt", p.vt_signs, p.rank);
    put_f16(out, name + ".h", p.h);
    put_f16(out, name + ".g", p.g);
    put_f16(out, name + ".l", p.l);
    ranks.push_back(p.rank);
  }
  out.set("subbit.littlebit." + prefix + ".ranks", ranks);
}

std::unique_ptr<Linear> LittleBitLinear::load(const GgufFile& file, const std::string& prefix,
                                              int64_t d_out, int64_t d_in) {
  const std::vector<int64_t> ranks = file.get_int_array("subbit.littlebit." + prefix + ".ranks");
  if (ranks.empty() || ranks.size() > 2) fail("{}: {}: expected 1 or 2 paths", file.path().string(), prefix);
  std::vector<LittleBitPath> paths;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const std::string name = fmt::format("{}.lb{}", prefix, i);
    LittleBitPath p;
    p.rank = ranks[i];
    if (p.rank < 1 || p.rank > std::min(d_in, d_out))
      fail("{}: {}: rank {} out of range", file.path().string(), prefix, p.rank);
    p.u_signs = get_words(file, name + ".u", d_out, sign_words_per_row(p.rank));
    p.vt_signs = get_words(file, name + ".vt", p.rank, sign_words_per_row(d_in));
    p.h = get_f16(file, name + ".h", d_out);
    p.g = get_f16(file, name + ".g", d_in);
    p.l = get_f16(file, name + ".l", p.rank);
    paths.push_back(std::move(p));
  }
  return std::make_unique<LittleBitLinear>(d_out, d_in, std::move(paths));
}

}  // namespace subbit
