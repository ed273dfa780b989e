#pragma once
// Bits per layer by measured sensitivity (`--allocate sensitivity`). Each block linear is
// compressed alone, at the uniform target and at twice it, into an otherwise original model, and
// the mean KL(original ‖ that model) of the next-token distributions on calibration tokens is
// measured. With D_j(b) = D_j(B) · exp(−κ (b − B) / B), κ fitted to the totals at B and 2 B, the
// allocation minimises Σ D_j(b_j) at the bits the uniform target stores (the Lagrange condition
// D_j'(b_j) = −λ · n_j, λ bisected), each b_j within [B / 2, 2 B]. Single-layer KL is the
// first-order (additive) estimate of each layer's effect on the output, as mixed-precision
// allocation methods use it (HAWQ, OWQ); docs/results.md measures whether it beats uniform.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "compress/methods.h"
#include "compress/torch_llama.h"

namespace subbit::compress {

struct LayerSensitivity {
  int64_t block;  // or kOutsideBlocks for a SizedTable
  int index;      // LinearIndex, or the SizedTable's OutsideTensor
  int64_t n_out, n_in;
  double kl_at_target;   // mean KL per token, nats, the layer alone at B
  double kl_at_double;   // the layer alone at 2 B
  double allocated_bpw;  // the target allocate_by_sensitivity gives it
};

// The embedding table or LM head when a whole-file budget sizes it with the linears' method: it
// is measured and allocated like a block linear (the head is the largest single tensor of a
// small-vocabulary model and often the most sensitive one).
struct SizedTable {
  OutsideTensor which;   // kEmbeddingTensor (looked up; with `tied` also the head) or kHeadTensor
  bool tied;             // one table serves as embedding and head: compressed as both
  torch::Tensor weight;  // (vocab, hidden) fp32, the original
};

// Measures every block linear of `teacher` (the original model), then every table, compressed by
// `method` at `target_bpw` and 2 · target_bpw, on `tokens` cut into windows of `seq`. The tables
// come last in the result, in the order given.
std::vector<LayerSensitivity> measure_sensitivity(
    TorchLlama& teacher, const TrainableMethod& method, double target_bpw,
    std::span<const SizedTable> tables, std::span<const int32_t> tokens, int64_t seq,
    const std::function<void(const std::string&)>& log);

// Fills allocated_bpw so that Σ method.stored_bpw(b_j) · n_j stays within `budget_bits`.
void allocate_by_sensitivity(std::vector<LayerSensitivity>& layers, const CompressMethod& method,
                             double target_bpw, double budget_bits);

}  // namespace subbit::compress
