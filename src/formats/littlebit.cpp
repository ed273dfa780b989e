#include "formats/littlebit.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"
#include "ops/parallel.h"
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
  const double budget =
      target_bpw * double(d_in) * double(d_out) - paths * 16.0 * double(d_in + d_out);
  const double per_rank = paths * double(d_in + d_out + 16);
  const int64_t rank = budget > 0 ? int64_t(budget / per_rank) / granularity * granularity : 0;
  return std::clamp<int64_t>(rank, granularity, std::min(d_in, d_out));
}

LittleBitLinear::LittleBitLinear(int64_t d_out, int64_t d_in, std::vector<LittleBitPath> paths)
    : d_out_(d_out), d_in_(d_in), paths_(std::move(paths)) {
  for (const LittleBitPath& p : paths_) {
    if (int64_t(p.h.size()) != d_out || int64_t(p.g.size()) != d_in ||
        int64_t(p.l.size()) != p.rank ||
        int64_t(p.u_signs.size()) != d_out * sign_words_per_row(p.rank) ||
        int64_t(p.vt_signs.size()) != p.rank * sign_words_per_row(d_in))
      fail("littlebit layer ({} x {}): inconsistent path of rank {}", d_out, d_in, p.rank);
    blocks_.push_back({sign_blocks({p.u_signs.data(), d_out, p.rank}),
                       sign_blocks({p.vt_signs.data(), p.rank, d_in})});
  }
}

void LittleBitLinear::forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const {
  // y = Σ_paths h ⊙ sign(U)·(l ⊙ sign(V)ᵀ·(g ⊙ x)): the sign products apply the scale vectors
  // themselves (SignScales), so no scaled copy of x or per-path output is ever written.
  const int64_t n_paths = int64_t(paths_.size());
  int64_t max_rank = 0;
  for (const LittleBitPath& p : paths_) max_rank = std::max(max_rank, p.rank);
  float* latent = scratch.floats(2, n_paths * tokens * max_rank);  // (paths, tokens, max_rank)
  const auto latent_of = [&](int64_t k) { return latent + k * tokens * max_rank; };
  const auto vt = [&](int64_t k) {
    const LittleBitPath& p = paths_[k];
    return SignMatrix{p.vt_signs.data(), p.rank, d_in_, blocks_[k].vt.data()};
  };
  const auto u = [&](int64_t k) {
    const LittleBitPath& p = paths_[k];
    return SignMatrix{p.u_signs.data(), d_out_, p.rank, blocks_[k].u.data()};
  };
  // Stage 1 gives the latent (tokens, rank) = l ⊙ sign(V)ᵀ·(g ⊙ x); stage 2 adds h ⊙ sign(U)·latent
  // of each path into y.
  const auto in_scales = [&](int64_t k) {
    return SignScales{paths_[k].g.data(), paths_[k].l.data(), false};
  };
  const auto out_scales = [&](int64_t k) {
    return SignScales{nullptr, paths_[k].h.data(), k > 0};
  };

  if (tokens >= 4) {
    // Batches: each sign product splits itself over the threads as suits its shape.
    for (int64_t k = 0; k < n_paths; ++k)
      sign_matmul(vt(k), x, latent_of(k), tokens, in_scales(k));
    for (int64_t k = 0; k < n_paths; ++k)
      sign_matmul(u(k), latent_of(k), y, tokens, out_scales(k));
    return;
  }
  // Decoding: one parallel region for the whole product instead of four sign products with a fork
  // and join each, which cost more than they share at small ranks. The first stage (rank rows,
  // d_in columns) splits its columns, so that each thread builds only its own columns' tables;
  // then every thread adds up all the threads' column sums itself, into its own copy of the
  // latent (rank floats per path: cheaper than the second barrier a shared sum would need), and
  // the second stage splits its rows.
  float* partial = nullptr;  // (threads − 1, paths, tokens, max_rank): other threads' column sums
  float* summed = nullptr;   // (threads, paths, tokens, max_rank): each thread's whole latent
  const int max_threads = num_threads();
  const int64_t latent_size = n_paths * tokens * max_rank;
  if (max_threads > 1) {
    partial = scratch.floats(3, (max_threads - 1) * latent_size);
    summed = scratch.floats(1, max_threads * latent_size);
  }
  const auto decode = [&](int thread, int threads) {
    const auto partial_of = [&](int other, int64_t k) {
      return other == 0 ? latent_of(k)
                        : partial + (other - 1) * latent_size + k * tokens * max_rank;
    };
    const Share inputs = share_of(d_in_, thread, threads, kSignColAlign);
    for (int64_t k = 0; k < n_paths; ++k)
      sign_matmul_block(vt(k), x, partial_of(thread, k), tokens, 0, paths_[k].rank, inputs.begin,
                        inputs.end, in_scales(k));
    const auto latent_in = [&](int64_t k) {
      return threads > 1 ? summed + thread * latent_size + k * tokens * max_rank : latent_of(k);
    };
    if (threads > 1) {
      team_barrier();  // alone, it would bind to a caller's team
      for (int64_t k = 0; k < n_paths; ++k) {
        const int64_t rank = paths_[k].rank;
        for (int64_t t = 0; t < tokens; ++t) {
          float* z = latent_in(k) + t * rank;
          std::copy_n(partial_of(0, k) + t * rank, rank, z);
          for (int other = 1; other < threads; ++other) {
            const float* add = partial_of(other, k) + t * rank;
            for (int64_t j = 0; j < rank; ++j) z[j] += add[j];
          }
        }
      }
    }
    const Share outputs = share_of(d_out_, thread, threads, kSignRowAlign);
    for (int64_t k = 0; k < n_paths; ++k)
      sign_matmul_block(u(k), latent_in(k), y, tokens, outputs.begin, outputs.end, 0,
                        paths_[k].rank, out_scales(k));
  };
  double work = 0;  // sign·token products of the whole layer
  for (const LittleBitPath& p : paths_)
    work += double(p.rank) * double(d_in_ + d_out_) * double(tokens);
  if (work < kSignMinParallelWork)
    decode(0, 1);  // small layers (sb-30m's): a team would cost more than it shares
  else
    parallel_team(decode);
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

// Row o of Σ_paths diag(h)·sign(U)·diag(l)·sign(V)ᵀ·diag(g): per path g ⊙ (sign(V)·c) with
// c = h[o]·l ⊙ sign(U[o]), a weighted sum of the rank rows of Vᵀ (r·d_in operations, so an
// embedding in this format costs a rank-r product per looked-up token).
void LittleBitLinear::decode_row(int64_t o, float* out) const {
  std::fill(out, out + d_in_, 0.0f);
  std::vector<float> coeffs, combined(d_in_);  // (rank), (d_in)
  for (const LittleBitPath& p : paths_) {
    const uint64_t* u_row = p.u_signs.data() + o * sign_words_per_row(p.rank);
    coeffs.resize(p.rank);
    for (int64_t j = 0; j < p.rank; ++j)
      coeffs[j] = ((u_row[j / 64] >> (j % 64)) & 1 ? p.h[o] : -p.h[o]) * p.l[j];
    sign_combine_rows(SignMatrix{p.vt_signs.data(), p.rank, d_in_}, coeffs.data(), combined.data());
    for (int64_t i = 0; i < d_in_; ++i) out[i] += combined[i] * p.g[i];
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
  if (ranks.empty() || ranks.size() > 2)
    fail("{}: {}: expected 1 or 2 paths", file.path().string(), prefix);
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
