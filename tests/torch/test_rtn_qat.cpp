// RTN in QAT: the trainable module rounds exactly as the runtime encoder, its gradient passes
// straight through, training lowers a loss and deploys what it trained, and a tied rtn table
// trains through both the embedding lookup and the LM head.
#include <torch/torch.h>

#include "compress/qat.h"
#include "compress/rtn.h"
#include "formats/rtn.h"
#include "model/loader.h"
#include "test_support.h"

namespace subbit {
namespace {

using compress::dense_weight;
using compress::RtnTrainable;
using testing::calib_text;
using testing::model_dir;

TEST(RtnTrainable, RoundsAsTheEncoderDoes) {
  torch::manual_seed(0);
  // Whole groups, a partial last group, a row shorter than a group.
  for (auto [n_out, n_in] : {std::pair{5, 256}, {7, 300}, {3, 37}})
    for (int bits : {2, 3, 4, 8}) {
      const torch::Tensor w = torch::randn({n_out, n_in});
      RtnTrainable module(w, bits);
      torch::NoGradGuard no_grad;
      const torch::Tensor expected =
          dense_weight(*RtnLinear::encode(w.data_ptr<float>(), n_out, n_in, bits));
      // The deployed codes are the encoder's exactly; forward's weights are them up to the last bit
      // of the straight-through sum.
      EXPECT_TRUE(torch::equal(dense_weight(*module.to_runtime()), expected))
          << n_out << "x" << n_in << " bits " << bits;
      EXPECT_TRUE(torch::allclose(module.weight(), expected, 0, 1e-6));
      const torch::Tensor index = torch::tensor({int64_t{n_out - 1}, int64_t{0}});
      EXPECT_TRUE(torch::allclose(module.rows(index), expected.index_select(0, index), 0, 1e-6));
      const torch::Tensor x = torch::randn({4, n_in});
      EXPECT_TRUE(torch::allclose(module.forward(x), torch::matmul(x, expected.t()), 1e-5, 1e-5));
    }
}

TEST(RtnTrainable, RowsOfTheirOwnWidthsRoundAsTheEncoderDoes) {
  torch::manual_seed(3);
  const std::vector<uint8_t> widths = {2, 8, 3, 5, 2};
  const torch::Tensor w = torch::randn({5, 300});
  RtnTrainable module(w, widths);
  torch::NoGradGuard no_grad;
  const torch::Tensor expected = dense_weight(*RtnLinear::encode(w.data_ptr<float>(), 5, 300, widths));
  EXPECT_TRUE(torch::equal(dense_weight(*module.to_runtime()), expected));
  EXPECT_TRUE(torch::allclose(module.weight(), expected, 0, 1e-6));
  const torch::Tensor index = torch::tensor({int64_t{3}, int64_t{1}, int64_t{3}});
  EXPECT_TRUE(torch::allclose(module.rows(index), expected.index_select(0, index), 0, 1e-6));
}

TEST(RtnTrainable, GradientPassesStraightThroughTheRounding) {
  torch::manual_seed(1);
  RtnTrainable module(torch::randn({6, 130}), 2);
  const torch::Tensor c = torch::randn({6, 130});
  (module.weight() * c).sum().backward();
  const auto params = module.parameters();
  ASSERT_EQ(params.size(), size_t(1));
  EXPECT_TRUE(torch::allclose(params[0].grad(), c));
}

TEST(RtnTrainable, AdamLowersTheLayerOutputLossAndDeploysWhatItTrained) {
  torch::manual_seed(2);
  const int64_t d_out = 32, d_in = 256;
  const torch::Tensor w = torch::randn({d_out, d_in}) / 16.0;
  // Correlated inputs (rank 16 plus a little noise): with white inputs nearest rounding is already
  // the best code of every weight, here other codes can compensate each other's errors.
  const torch::Tensor x = torch::matmul(torch::randn({512, 16}), torch::randn({16, d_in})) +
                          0.1 * torch::randn({512, d_in});
  const torch::Tensor target = torch::matmul(x, w.t());
  RtnTrainable module(w, 2);
  torch::optim::Adam optimizer(module.parameters(), torch::optim::AdamOptions(3e-4));
  const auto loss_now = [&] { return torch::mse_loss(module.forward(x), target); };
  const double initial = loss_now().item<double>();
  for (int step = 0; step < 200; ++step) {
    optimizer.zero_grad();
    loss_now().backward();
    optimizer.step();
  }
  torch::NoGradGuard no_grad;
  const double trained = loss_now().item<double>();
  EXPECT_LT(trained, 0.9 * initial) << "initial " << initial << ", trained " << trained;
  EXPECT_TRUE(torch::allclose(dense_weight(*module.to_runtime()), module.weight(), 0, 1e-6));
}

// sb-8m's tied table as rtn:2, everything else the original: QAT (default learning rate) moves the
// table (used as the embedding and as the head) towards the teacher, and the distillation loss
// falls.
TEST(RtnTrainable, TiedTableTrainsInQat) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  torch::manual_seed(0);
  ModelBundle bundle = load_model(model_dir("sb-8m"));
  compress::TorchLlama teacher(*bundle.model), student(*bundle.model);
  const torch::Tensor table =
      std::dynamic_pointer_cast<compress::FrozenDense>(teacher.head())->weight();
  auto rtn = std::make_shared<RtnTrainable>(table, 2);
  student.set_head(rtn, true);
  const torch::Tensor encoded = dense_weight(*rtn->to_runtime());
  const auto tokens = compress::load_training_tokens({calib_text()}, *bundle.tokenizer, 20000);
  const torch::Tensor probe =
      torch::tensor(std::vector<int64_t>(tokens.begin() + 10000, tokens.begin() + 10256))
          .view({2, 128});
  compress::QatOptions o;
  const auto loss = [&] {
    torch::NoGradGuard g;
    return compress::distillation_loss(teacher, student, probe, o.hidden_weight).item<double>();
  };
  const double before = loss();
  o.train_tokens = 8 * 2 * 128;
  o.seq = 128;
  o.batch = 2;
  compress::train_qat(teacher, student, std::span(tokens).first(10000), o);
  const double after = loss();
  EXPECT_LT(after, before * 0.95) << "held-out loss " << before << " -> " << after;
  const torch::Tensor trained = dense_weight(*rtn->to_runtime());
  EXPECT_GT((trained != encoded).sum().item<int64_t>(), 0) << "the deployed table did not change";
}

}  // namespace
}  // namespace subbit
