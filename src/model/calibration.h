#pragma once
// Calibration statistics through the inference engine: the RMS of every input column of every
// linear layer over real text, for saliency-aware compression (|w_ij| · rms(x_j)).
#include <cstdint>
#include <span>
#include <vector>

#include "model/llama.h"

namespace subbit {

// Per layer, per linear (q, k, v, o, gate, up, down): the RMS of each input column, (n_in).
using ColumnRms = std::vector<std::vector<std::vector<float>>>;

// Runs `tokens` through the model in windows of `ctx`, observing every linear layer's input.
ColumnRms collect_column_rms(const LlamaModel& model, std::span<const int32_t> tokens, int64_t ctx);

}  // namespace subbit
