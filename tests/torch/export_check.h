#pragma once
// "A compressed file computes what its Hugging Face export holds", within what bf16 storage
// explains. The export stores every weight and norm in bf16 (round to nearest even, 8 significant
// bits), so each exported value lies within 2^-8 of the file's value, relative to it. At the
// output, a token's NLL = logsumexp(z) - z_target moves by at most 2·max_v |Δz_v| (each term by at
// most max |Δz|), so |ln ppl_file - ln ppl_export| <= 2·max |Δz| over the scored positions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "io/text_file.h"
#include "model/loader.h"
#include "model/perplexity.h"

namespace subbit::testing {

inline void expect_within_bf16_rounding(const std::vector<float>& file,
                                        const std::vector<float>& exported,
                                        const std::string& what) {
  ASSERT_EQ(file.size(), exported.size()) << what;
  for (size_t i = 0; i < file.size(); ++i)
    ASSERT_LE(std::fabs(exported[i] - file[i]), std::ldexp(std::fabs(file[i]), -8) + 1e-38f)
        << what << " element " << i << ": file " << file[i] << ", export " << exported[i];
}

inline std::vector<float> weights_of(const Linear& linear) {
  std::vector<float> w(linear.n_out() * linear.n_in());
  linear.dequantize(w.data());
  return w;
}

inline void expect_export_holds_the_files_model(const std::filesystem::path& file,
                                                const std::filesystem::path& exported,
                                                const std::filesystem::path& text, int64_t ctx,
                                                int64_t windows) {
  const ModelBundle a = load_model(file), b = load_model(exported);
  const LlamaWeights &wa = a.model->weights(), &wb = b.model->weights();
  ASSERT_EQ(wa.layers.size(), wb.layers.size());
  for (size_t l = 0; l < wa.layers.size(); ++l) {
    const LlamaLayer &la = wa.layers[l], &lb = wb.layers[l];
    for (int i = 0; i < kLinearsPerBlock; ++i)
      expect_within_bf16_rounding(weights_of(*la.linear[i]), weights_of(*lb.linear[i]),
                                  "layer " + std::to_string(l) + " linear " + std::to_string(i));
    expect_within_bf16_rounding(la.norm[kAttnNorm], lb.norm[kAttnNorm], "attn_norm");
    expect_within_bf16_rounding(la.norm[kMlpNorm], lb.norm[kMlpNorm], "mlp_norm");
  }
  expect_within_bf16_rounding(wa.final_norm, wb.final_norm, "final_norm");
  expect_within_bf16_rounding(weights_of(*wa.lm_head), weights_of(*wb.lm_head), "lm_head");

  const auto tokens = a.tokenizer->encode(read_text_file(text), true);
  ASSERT_EQ(tokens, b.tokenizer->encode(read_text_file(text), true));
  const int64_t vocab = a.model->config().vocab_size;
  float max_dz = 0;
  std::vector<float> za(ctx * vocab), zb(ctx * vocab);
  for (int64_t w = 0; w < windows; ++w) {
    const std::span<const int32_t> window(tokens.data() + w * ctx, size_t(ctx));
    RunState ca(a.model->config(), ctx), cb(b.model->config(), ctx);
    a.model->forward(window, 0, ca, za.data(), true);
    b.model->forward(window, 0, cb, zb.data(), true);
    for (int64_t i = 0; i < ctx * vocab; ++i) max_dz = std::max(max_dz, std::fabs(za[i] - zb[i]));
  }
  const double ppl_a = evaluate_perplexity(*a.model, tokens, ctx, windows).ppl;
  const double ppl_b = evaluate_perplexity(*b.model, tokens, ctx, windows).ppl;
  std::cout << "file ppl " << ppl_a << ", export ppl " << ppl_b << ", |ln ratio| "
            << std::fabs(std::log(ppl_a / ppl_b)) << ", max |Δlogit| " << max_dz << "\n";
  EXPECT_LE(std::fabs(std::log(ppl_a / ppl_b)), 2.0 * max_dz);
}

}  // namespace subbit::testing
