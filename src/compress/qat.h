#pragma once
// Quantization-aware training by knowledge distillation: the student (compressed linears) learns
// to match the teacher (the original model) with
//   loss = KL(teacher ‖ student) on the logits + hidden_weight · Σ_blocks MSE(h_student, h_teacher)
// AdamW, linear warm-up then cosine decay, gradient-norm clipping at 1. Checkpoints let an
// interrupted run resume and finish with exactly the same result.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "compress/data_parallel.h"
#include "compress/torch_llama.h"
#include "tokenizer/tokenizer.h"

namespace subbit::compress {

struct QatOptions {
  int64_t train_tokens = 0;  // total tokens to train on (0: no training)
  double lr = 3e-3;          // peak; the best of the CPU sweeps in docs/results.md
  double weight_decay = 0.0;
  double warmup_fraction = 0.05;
  // The paper's 10 lets the hidden-state term swamp the KL on these small models once training
  // runs longer than a few dozen steps (docs/results.md, "Longer QAT"); 1 was the best we measured.
  double hidden_weight = 1.0;
  // Whether the RMSNorm weights train along with the compressed linears (docs/results.md,
  // "Should norms train?"). Embeddings and the LM head never train.
  bool train_norms = true;
  int64_t seq = 256;
  int64_t batch = 4;  // sequences per step and rank: a step trains on batch x world_size sequences
  uint64_t seed = 0;
  std::filesystem::path checkpoint;  // empty: no checkpoints
  int64_t checkpoint_every = 25;     // steps
  torch::Device device = torch::kCPU;
  // Block-wise distillation instead of end-to-end: block l alone learns to map the teacher's input
  // of block l to the teacher's output (MSE), on the same windows, for the same steps, blocks
  // independent of each other; norms inside the blocks train, the head and final norm do not.
  // With several ranks, rank r trains blocks r, r + R, ... (no gradient exchange) and the file is
  // the one a single process writes. No checkpoints.
  bool blockwise = false;
  // Several processes (compress/data_parallel.h); null: this process alone. End-to-end: data
  // parallel, rank 0 writes checkpoints and every rank resumes from rank 0's. Block-wise: blocks
  // spread over ranks.
  std::shared_ptr<DataParallel> data_parallel;

  int world_size() const { return data_parallel ? data_parallel->world_size() : 1; }
  // Sequences each step trains on: end-to-end, every rank's batch; block-wise, one batch.
  int64_t sequences_per_step() const { return blockwise ? batch : batch * world_size(); }
};

struct QatProgress {
  int64_t step, total_steps, tokens_done;
  double loss;
};

struct QatResult {
  int64_t steps = 0;
  int64_t tokens = 0;
  int64_t resumed_from_step = 0;
  double first_loss = 0;  // the first step's loss
  double last_loss = 0;   // mean over the last 10 steps
  double seconds = 0;
  // Sign learning: for every trained latent whose sign is what the layer stores (LittleBit's
  // parameters named *_u, *_v), how often an entry's sign changed between consecutive steps of
  // this run, and how many entries end with another sign than they started this run with.
  struct SignFlips {
    std::string name;
    int64_t entries = 0, flips = 0, changed = 0;
  };
  std::vector<SignFlips> sign_flips;
};

// Tokens of the training texts, at most max_tokens. `.xz` files are read through `xz -dc`.
// Refuses the WikiText-2 test split, which is for evaluation only.
std::vector<int32_t> load_training_tokens(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, int64_t max_tokens);

// The distillation loss of one batch (batch, seq) of tokens.
torch::Tensor distillation_loss(TorchLlama& teacher, TorchLlama& student,
                                const torch::Tensor& tokens, double hidden_weight);

QatResult train_qat(TorchLlama& teacher, TorchLlama& student, std::span<const int32_t> tokens,
                    const QatOptions& options,
                    const std::function<void(const QatProgress&)>& progress = {});

}  // namespace subbit::compress
