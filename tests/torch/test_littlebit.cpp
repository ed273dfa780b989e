// LittleBit end to end: bit accounting, Dual-SVID, the trainer, the file, and resumption.
#include <torch/torch.h>

#include <iostream>
#include <map>
#include <thread>

#include "common/error.h"
#include "compress/littlebit.h"
#include "compress/pipeline.h"
#include "compress/qat.h"
#include "export_check.h"
#include "formats/littlebit.h"
#include "io/text_file.h"
#include "model/export.h"
#include "model/loader.h"
#include "model/perplexity.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::calib_text;
using testing::model_dir;

namespace fs = std::filesystem;
using namespace subbit::compress;

TEST(LittleBitBits, FormulaMatchesThePaper) {
  // bits = 2·r·(d_in + d_out + 16) + 32·(d_in + d_out) with the residual path.
  for (auto [d_in, d_out, r] : {std::tuple{4096, 4096, 64}, {4096, 11008, 8}, {256, 768, 24}})
    EXPECT_EQ(littlebit_bits(d_in, d_out, r, 2), 2 * r * (d_in + d_out + 16) + 32 * (d_in + d_out));
}

TEST(LittleBitBits, RankSelectionRoundsDownToMultipleOfEight) {
  for (double bpw : {0.1, 0.3, 0.55, 1.0}) {
    const int64_t r = littlebit_rank_for_bpw(4096, 4096, bpw, 2);
    EXPECT_EQ(r % 8, 0);
    EXPECT_GE(r, 8);
    EXPECT_LE(littlebit_bpw(4096, 4096, r, 2), bpw);
    EXPECT_GT(littlebit_bpw(4096, 4096, r + 8, 2), bpw);  // the largest such rank
  }
  // 4096x4096 at 1.0 bpw: r = (2^24 - 32·8192) / (2·8208) = 1006.1 -> 1000.
  EXPECT_EQ(littlebit_rank_for_bpw(4096, 4096, 1.0, 2), 1000);
  // A tiny layer cannot reach 0.1 bpw: the minimum rank overshoots, and says so via bpw.
  EXPECT_EQ(littlebit_rank_for_bpw(256, 256, 0.1, 2), 8);
  EXPECT_GT(littlebit_bpw(256, 256, 8, 2), 0.1);
  // Granularity 1: the largest rank within the target, never below the multiple-of-8 choice.
  const int64_t any_rank = littlebit_rank_for_bpw(4096, 4096, 0.55, 2, 1);
  EXPECT_LE(littlebit_bpw(4096, 4096, any_rank, 2), 0.55);
  EXPECT_GT(littlebit_bpw(4096, 4096, any_rank + 1, 2), 0.55);
  EXPECT_GE(any_rank, littlebit_rank_for_bpw(4096, 4096, 0.55, 2, 8));
}

TEST(DualSvid, ExactAtFullRankWithoutSign) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({24, 40});
  const LatentFactors f = dual_svid(w, 24);
  EXPECT_LT((reconstruct(f, false) - w).abs().max().item<float>(), 1e-4);
}

TEST(DualSvid, ErrorFallsAsRankGrows) {
  torch::manual_seed(0);
  // A matrix with a decaying spectrum, like trained weights.
  const torch::Tensor w = torch::matmul(
      torch::randn({128, 128}) * torch::exp(-torch::arange(128) / 16.0), torch::randn({128, 192}));
  double previous = 1e30;
  // Well below full rank: near full rank the rank-1 scale split, not the rank, limits the error.
  for (int64_t r : {4, 8, 16, 32}) {
    const double error =
        (reconstruct(dual_svid(w, r), true) - w).norm().item<double>() / w.norm().item<double>();
    EXPECT_LT(error, previous) << "rank " << r;
    previous = error;
  }
  // Scales are non-negative and sign(0) = +1 convention holds through surrogate_sign.
  const LatentFactors f = dual_svid(w, 8);
  EXPECT_GE(f.h.min().item<float>(), 0.0f);
  EXPECT_GE(f.g.min().item<float>(), 0.0f);
  EXPECT_EQ(surrogate_sign(torch::zeros({1}), SignSurrogate::Tanh, 100).item<float>(), 1.0f);
}

TEST(LittleBitTrainable, RuntimeLayerComputesTheSameAsTheModule) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({70, 45});
  LittleBitTrainable module(w, 16, /*residual=*/true, SignSurrogate::Tanh, 100);
  const torch::Tensor x = torch::randn({5, 45});
  const torch::Tensor expected = module.forward(x).detach();
  const auto runtime = module.to_runtime();
  torch::Tensor y = torch::empty({5, 70});
  Scratch scratch;
  runtime->forward(x.data_ptr<float>(), y.data_ptr<float>(), 5, scratch);
  // The runtime stores scales in fp16: agreement to fp16 precision.
  EXPECT_LT((y - expected).abs().max().item<float>(),
            2e-3 * (1 + expected.abs().max().item<float>()));
  EXPECT_EQ(runtime->storage_bits(), littlebit_bits(45, 70, 16, 2));
}

TEST(LittleBitTrainable, GradientsReachLatentFactors) {
  torch::manual_seed(2);
  LittleBitTrainable module(torch::randn({16, 12}), 8, true, SignSurrogate::Tanh, 100);
  module.forward(torch::randn({3, 12})).pow(2).sum().backward();
  for (const auto& p : module.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<float>(), 0.0f) << p.key();
  }
}

// Every block linear of the student becomes a two-path LittleBit layer of `rank`, Dual-SVID
// initialised from the teacher's weights (tanh surrogate, alpha 100).
void make_littlebit_student(const TorchLlama& teacher, TorchLlama& student, int64_t rank) {
  for (int64_t l = 0; l < student.config().num_layers; ++l)
    for (int i = 0; i < kLinearsPerBlock; ++i) {
      const auto w = std::dynamic_pointer_cast<FrozenDense>(teacher.linear(l, i))->weight();
      student.set_linear(
          l, i, std::make_shared<LittleBitTrainable>(w, rank, true, SignSurrogate::Tanh, 100));
    }
}

TEST(Qat, ShortRunLowersDistillationLoss) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  torch::manual_seed(0);
  ModelBundle bundle = load_model(model_dir("sb-8m"));
  TorchLlama teacher(*bundle.model), student(*bundle.model);
  make_littlebit_student(teacher, student, 16);
  const auto tokens = load_training_tokens({calib_text()}, *bundle.tokenizer, 20000);
  const torch::Tensor probe =
      torch::tensor(std::vector<int64_t>(tokens.begin() + 10000, tokens.begin() + 10256))
          .view({2, 128});
  QatOptions o;
  double before, after;
  {
    torch::NoGradGuard g;
    before = distillation_loss(teacher, student, probe, o.hidden_weight).item<double>();
  }
  o.train_tokens = 12 * 2 * 128;
  o.seq = 128;
  o.batch = 2;
  o.lr = 5e-3;
  const QatResult r = train_qat(teacher, student, std::span(tokens).first(10000), o);
  {
    torch::NoGradGuard g;
    after = distillation_loss(teacher, student, probe, o.hidden_weight).item<double>();
  }
  EXPECT_EQ(r.steps, 12);
  EXPECT_LT(after, before * 0.9) << "held-out loss " << before << " -> " << after;
  // Sign learning is alive: u and v of both paths of every linear are tracked, and some flip.
  ASSERT_EQ(r.sign_flips.size(), size_t(student.config().num_layers * kLinearsPerBlock * 2 * 2));
  int64_t changed = 0, flips = 0;
  for (const auto& f : r.sign_flips) {
    EXPECT_LE(f.changed, f.flips) << f.name;
    changed += f.changed;
    flips += f.flips;
  }
  EXPECT_GT(changed, 0);
  std::cout << "signs changed " << changed << ", flips " << flips << "\n";
}

TEST(Qat, NormsTrainOnlyWhenAsked) {
  const fs::path dir = testing::shared_dir() / "models" / "stories260K";
  SKIP_UNLESS_EXISTS(dir / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  ModelBundle bundle = load_model(dir);
  const auto tokens = load_training_tokens({calib_text()}, *bundle.tokenizer, 4096);
  for (bool train_norms : {false, true}) {
    torch::manual_seed(0);
    TorchLlama teacher(*bundle.model), student(*bundle.model);
    make_littlebit_student(teacher, student, 8);
    std::map<std::string, torch::Tensor> before;
    for (const auto& p : student.named_parameters()) before[p.key()] = p.value().detach().clone();
    QatOptions o;
    o.train_norms = train_norms;
    o.train_tokens = 3 * 2 * 64;
    o.seq = 64;
    o.batch = 2;
    train_qat(teacher, student, tokens, o);
    int64_t norms_changed = 0, norms = 0, linears_changed = 0;
    for (const auto& p : student.named_parameters()) {
      const bool changed = !torch::equal(p.value().detach(), before[p.key()]);
      if (p.key().find("norm") != std::string::npos && p.key().find('.') == std::string::npos) {
        ++norms;
        norms_changed += changed;
      } else {
        linears_changed += changed;
      }
    }
    EXPECT_EQ(norms, 2 * student.config().num_layers + 1);
    EXPECT_EQ(norms_changed, train_norms ? norms : 0) << "train_norms " << train_norms;
    EXPECT_GT(linears_changed, 0) << "train_norms " << train_norms;
  }
}

// Block-wise distillation trains every block, one at a time: a trained block's gradients go with
// its optimizer, so no block's training state outlives its turn (on a 1B shape every block's
// gradients held to the end were 2.1 GB).
TEST(Qat, BlockwiseTrainsEveryBlockAndKeepsNoGradients) {
  const fs::path dir = testing::shared_dir() / "models" / "stories260K";
  SKIP_UNLESS_EXISTS(dir / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  ModelBundle bundle = load_model(dir);
  const auto tokens = load_training_tokens({calib_text()}, *bundle.tokenizer, 4096);
  torch::manual_seed(0);
  TorchLlama teacher(*bundle.model);
  TorchLlama student(teacher, TorchLlama::ShareFrozen{});
  const int64_t blocks = student.config().num_layers;
  make_littlebit_student(teacher, student, 8);
  std::vector<std::vector<torch::Tensor>> before(blocks);
  for (int64_t l = 0; l < blocks; ++l)
    for (const torch::Tensor& p : student.block_parameters(l))
      before[l].push_back(p.detach().clone());
  QatOptions o;
  o.blockwise = true;
  o.train_tokens = 2 * 2 * 64;
  o.seq = 64;
  o.batch = 2;
  train_qat(teacher, student, tokens, o);
  for (int64_t l = 0; l < blocks; ++l) {
    const std::vector<torch::Tensor> after = student.block_parameters(l);
    int64_t changed = 0;
    for (size_t i = 0; i < after.size(); ++i) {
      changed += !torch::equal(after[i].detach(), before[l][i]);
      EXPECT_FALSE(after[i].grad().defined()) << "block " << l << " parameter " << i;
    }
    EXPECT_GT(changed, 0) << "block " << l << " did not train";
  }
}

TEST(Qat, RefusesTheEvaluationText) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  ModelBundle bundle = load_model(model_dir("sb-8m"));
  EXPECT_THROW(load_training_tokens({testing::shared_dir() / "text" / "wiki.test.raw"},
                                    *bundle.tokenizer, 100),
               Error);
}

TEST(LittleBitFile, PerplexityEqualsItsDenseExport) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(testing::shared_dir() / "text" / "wikitext2.valid.tokens");
  const auto dir = testing::temp_dir("lbfile");
  const std::string file = (dir / "sb8m-lb.gguf").string();
  testing::run_cli("compress " + model_dir("sb-8m").string() + " -o " + file +
                   " --method littlebit --bpw 0.55");
  testing::run_cli("export " + file + " -o " + (dir / "exported").string());
  testing::expect_export_holds_the_files_model(
      file, dir / "exported", testing::shared_dir() / "text" / "wikitext2.valid.tokens", 256, 6);
  const std::string info = testing::run_cli("info " + file);
  EXPECT_NE(info.find("littlebit"), std::string::npos);
  EXPECT_NE(info.find("rank"), std::string::npos);
  fs::remove_all(dir);
}

TEST(LittleBitFile, KilledAndResumedEqualsUninterrupted) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const auto dir = testing::temp_dir("resume");
  const std::string common = "compress " + model_dir("sb-8m").string() +
                             " --method littlebit --bpw 0.3 --train-text " + calib_text().string() +
                             " --train-tokens 2048 --seq 128 --batch 2 --lr 2e-3 -t 1 " +
                             "--checkpoint-every 2 ";
  const std::string straight = (dir / "straight.gguf").string(),
                    resumed = (dir / "resumed.gguf").string();
  testing::run_cli(common + "-o " + straight);

  // Start the same run, kill it (SIGKILL) as soon as its first checkpoint exists, then rerun.
  const std::string cmd = testing::cli_path().string() + " " + common + "-o " + resumed;
  const std::string ckpt = resumed + ".ckpt";
  const auto r = testing::run_command(
      "(" + cmd + " >/dev/null 2>&1 & pid=$!; for i in $(seq 1 6000); do [ -f " + ckpt +
      " ] && break; sleep 0.05; done; kill -9 $pid; wait $pid; exit 0)");
  ASSERT_EQ(r.exit_code, 0);
  ASSERT_TRUE(fs::exists(ckpt)) << "no checkpoint was written before the kill";
  ASSERT_FALSE(fs::exists(resumed)) << "a killed run must not leave an output file";
  const std::string out = testing::run_cli(common + "-o " + resumed);
  EXPECT_NE(out.find("resumed at step"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(ckpt)) << "the checkpoint is removed once the output is written";

  EXPECT_TRUE(testing::file_bytes(straight) == testing::file_bytes(resumed))
      << "the resumed run wrote a different file";
  fs::remove_all(dir);
}

TEST(LittleBitFile, CorruptOrTruncatedFilesFailCleanly) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const auto dir = testing::temp_dir("corrupt");
  const fs::path file = dir / "m.gguf";
  testing::run_cli("compress " + model_dir("sb-8m").string() + " -o " + file.string() +
                   " --method littlebit --bpw 0.1");
  const auto size = fs::file_size(file);
  for (double fraction : {0.001, 0.3, 0.9, 0.9999}) {
    fs::copy_file(file, dir / "cut.gguf", fs::copy_options::overwrite_existing);
    fs::resize_file(dir / "cut.gguf", uintmax_t(double(size) * fraction));
    const auto r =
        testing::run_command(testing::cli_path().string() + " info " + (dir / "cut.gguf").string());
    EXPECT_EQ(r.exit_code, 1) << fraction << ": " << r.err;
    EXPECT_NE(r.err.find("cut.gguf"), std::string::npos) << r.err;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
