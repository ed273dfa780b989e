#pragma once
// LittleBit (arXiv 2506.13771): W ≈ Σ_paths diag(h) · sign(U) · diag(l) · sign(V)ᵀ · diag(g),
// a primary path plus an optional residual path, each of rank r. Inference never rebuilds W:
// y = h ⊙ (sign(U) · (l ⊙ (sign(V)ᵀ · (g ⊙ x)))) is two skinny sign products and three scalings.
//
// Bits per layer (signs 1 bit, scales fp16), for `paths` paths:
//   bits = paths · (r·(d_in + d_out) + 16·(d_in + d_out + r))
// which for two paths is the paper's 2·r·(d_in + d_out + 16) + 32·(d_in + d_out).
#include <cstdint>
#include <vector>

#include "formats/linear.h"

namespace subbit {

int64_t littlebit_bits(int64_t d_in, int64_t d_out, int64_t rank, int paths);
double littlebit_bpw(int64_t d_in, int64_t d_out, int64_t rank, int paths);
// Largest rank (a multiple of `granularity`, at least `granularity`) whose bpw stays within
// `target_bpw`; the minimum rank may overshoot the target (check with littlebit_bpw).
int64_t littlebit_rank_for_bpw(int64_t d_in, int64_t d_out, double target_bpw, int paths,
                               int64_t granularity = 8);

struct LittleBitPath {
  int64_t rank = 0;
  std::vector<uint64_t> u_signs;   // sign matrix (d_out, rank)
  std::vector<uint64_t> vt_signs;  // sign matrix (rank, d_in): sign(V)ᵀ
  std::vector<float> h;            // (d_out), fp16-representable
  std::vector<float> g;            // (d_in)
  std::vector<float> l;            // (rank)
};

class LittleBitLinear final : public Linear {
 public:
  LittleBitLinear(int64_t d_out, int64_t d_in, std::vector<LittleBitPath> paths);
  int64_t n_in() const override { return d_in_; }
  int64_t n_out() const override { return d_out_; }
  void forward(const float* x, float* y, int64_t tokens, Scratch& scratch) const override;
  void decode_row(int64_t row, float* out) const override;
  void dequantize(float* w) const override;
  std::string format_name() const override { return "littlebit"; }
  int64_t storage_bits() const override;
  std::string describe() const override;
  void save(GgufWriter& out, const std::string& prefix) const override;
  static std::unique_ptr<Linear> load(const GgufFile& file, const std::string& prefix,
                                      int64_t d_out, int64_t d_in);
  const std::vector<LittleBitPath>& paths() const { return paths_; }

 private:
  // The sign matrices again in the lookup-table kernel's block layout (sign_blocks), per path:
  // the kernel's fast input, while paths_ keeps the file's order for save/decode/dequantize.
  // Doubles the signs' memory (0.1-1 bit per weight more), about halves the product's time.
  struct Blocks {
    std::vector<uint32_t> u, vt;
  };
  int64_t d_out_, d_in_;
  std::vector<LittleBitPath> paths_;
  std::vector<Blocks> blocks_;
};

}  // namespace subbit
