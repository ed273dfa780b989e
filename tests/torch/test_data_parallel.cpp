// Data-parallel QAT (compress/data_parallel.h): two ranks over loopback train the student one
// rank of twice the batch trains, a rank that dies or never comes makes the others fail with a
// clear error instead of hanging, and a rerun resumes from rank 0's checkpoint to the same file.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>

#include "common/error.h"
#include "compress/data_parallel.h"
#include "model/loader.h"
#include "model/perplexity.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace subbit {
namespace {

using testing::calib_text;
using testing::model_dir;

namespace fs = std::filesystem;
using compress::rank_window_positions;
using compress::resolve_data_parallel;

// A port nothing listens on now (the kernel's pick for a socket bound to port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  ::close(fd);
  return ntohs(address.sin_port);
}

// `subbit compress` of sb-8m to LittleBit 0.3 with a few QAT steps on one thread.
std::string qat_command(const fs::path& out, int64_t batch, const std::string& extra = "") {
  return testing::cli_path().string() + " compress " + model_dir("sb-8m").string() +
         " --method littlebit --bpw 0.3" + " --train-text " + calib_text().string() +
         " --train-tokens 4096 --seq 128 --lr 3e-3 -t 1" + " --batch " + std::to_string(batch) +
         " -o " + out.string() + " " + extra;
}

std::string rank_flags(int rank, int world, int port) {
  return "--world-size " + std::to_string(world) + " --rank " + std::to_string(rank) +
         " --master-port " + std::to_string(port);
}

// The same QAT command for ranks 0 and 1 of a world of two, meeting at a free port.
std::vector<std::string> two_rank_commands(const fs::path& out, int64_t batch,
                                           const std::string& extra) {
  const int port = free_port();
  return {qat_command(out, batch, extra + " " + rank_flags(0, 2, port)),
          qat_command(out, batch, extra + " " + rank_flags(1, 2, port))};
}

// Runs the commands at once (one per rank) and returns each one's exit code and output.
std::vector<testing::CommandResult> run_together(const std::vector<std::string>& commands,
                                                 const fs::path& dir) {
  std::string script;
  for (size_t i = 0; i < commands.size(); ++i) {
    const std::string log = (dir / ("rank" + std::to_string(i))).string();
    script +=
        "(" + commands[i] + " >" + log + ".out 2>" + log + ".err; echo $? >" + log + ".rc) & ";
  }
  EXPECT_EQ(std::system(("bash -c '" + script + "wait'").c_str()), 0);
  std::vector<testing::CommandResult> results;
  for (size_t i = 0; i < commands.size(); ++i) {
    const fs::path log = dir / ("rank" + std::to_string(i));
    results.push_back({std::atoi(testing::file_bytes(log.string() + ".rc").c_str()),
                       testing::file_bytes(log.string() + ".out"),
                       testing::file_bytes(log.string() + ".err")});
  }
  return results;
}

TEST(DataParallel, TwoRanksTakeTheHalvesOfOneRanksBatchInOrder) {
  for (int64_t step = 0; step < 5; ++step) {
    std::vector<int64_t> both = rank_window_positions(step, 3, 0, 2);
    const std::vector<int64_t> second = rank_window_positions(step, 3, 1, 2);
    both.insert(both.end(), second.begin(), second.end());
    EXPECT_EQ(both, rank_window_positions(step, 6, 0, 1)) << "step " << step;
  }
}

TEST(DataParallel, FlagsWinOverTorchrunVariablesAndBadValuesAreRefused) {
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("RANK", "3", 1);
  ::setenv("MASTER_ADDR", "10.0.0.7", 1);
  ::setenv("MASTER_PORT", "29999", 1);
  const auto from_env = resolve_data_parallel(0, -1, "", 0, std::chrono::seconds(5));
  EXPECT_EQ(from_env.world_size, 4);
  EXPECT_EQ(from_env.rank, 3);
  EXPECT_EQ(from_env.master_addr, "10.0.0.7");
  EXPECT_EQ(from_env.master_port, 29999);
  const auto flags = resolve_data_parallel(2, 1, "127.0.0.1", 1234, std::chrono::seconds(5));
  EXPECT_EQ(flags.world_size, 2);
  EXPECT_EQ(flags.rank, 1);
  EXPECT_EQ(flags.master_addr, "127.0.0.1");
  EXPECT_EQ(flags.master_port, 1234);
  EXPECT_THROW(resolve_data_parallel(2, 2, "", 0, std::chrono::seconds(5)),
               Error);  // rank >= world
  ::setenv("RANK", "x", 1);
  try {
    resolve_data_parallel(0, -1, "", 0, std::chrono::seconds(5));
    ADD_FAILURE() << "RANK=x was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RANK=\"x\""), std::string::npos) << e.what();
  }
  for (const char* name : {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(name);
  const auto alone = resolve_data_parallel(0, -1, "", 0, std::chrono::seconds(5));
  EXPECT_EQ(alone.world_size, 1);
  EXPECT_EQ(alone.rank, 0);
}

// Entries of a tensor that differ by more than `tolerance` of its largest |value|.
struct Differences {
  int64_t entries = 0, differing = 0;
  void add(const std::vector<float>& a, const std::vector<float>& b, double tolerance) {
    double scale = 0;
    for (float x : a) scale = std::max(scale, double(std::abs(x)));
    for (size_t k = 0; k < a.size(); ++k) differing += std::abs(a[k] - b[k]) > tolerance * scale;
    entries += int64_t(a.size());
  }
};

// Over every trained tensor: each linear layer's reconstructed weights and each norm.
Differences trained_differences(const LlamaWeights& a, const LlamaWeights& b, double tolerance) {
  Differences d;
  d.add(a.final_norm, b.final_norm, tolerance);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (size_t i = 0; i < a.layers[l].norm.size(); ++i)
      d.add(a.layers[l].norm[i], b.layers[l].norm[i], tolerance);
    for (size_t i = 0; i < a.layers[l].linear.size(); ++i) {
      const Linear& x = *a.layers[l].linear[i];
      const Linear& y = *b.layers[l].linear[i];
      std::vector<float> wx(x.n_out() * x.n_in()), wy(wx.size());  // (n_out, n_in)
      x.dequantize(wx.data());
      y.dequantize(wy.data());
      d.add(wx, wy, tolerance);
    }
  }
  return d;
}

TEST(DataParallel, TwoRanksOfBatchTwoTrainTheStudentOfOneRankOfBatchFour) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const fs::path dir = testing::temp_dir("dp-equal");
  const fs::path one = dir / "one.gguf", two = dir / "two.gguf";
  const auto single = testing::run_command(qat_command(one, 4, "--no-checkpoint"));
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const auto ranks = run_together(two_rank_commands(two, 2, "--no-checkpoint"), dir);
  for (const auto& r : ranks) ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(ranks[1].out.find("rank 1 of 2: trained 8 steps"), std::string::npos) << ranks[1].out;

  const ModelBundle a = load_model(one), b = load_model(two);
  // Summing two half-batch gradients instead of one full-batch gradient changes only the
  // rounding of what trains, but a sign latent near zero can then land on the other side, which
  // moves a whole row or column of its layer's product: with OpenBLAS's AVX-512 kernels a few
  // did (largest difference 4.4e-4), with its SSE3 kernels none (1.2e-7).
  const Differences d = trained_differences(a.model->weights(), b.model->weights(), 1e-5);
  EXPECT_LT(double(d.differing) / double(d.entries), 1e-3) << d.differing << " of " << d.entries;
  const std::vector<int32_t> tokens = a.tokenizer->encode(
      testing::file_bytes(testing::shared_dir() / "text" / "wikitext2.valid.tokens")
          .substr(0, 20000));
  const double ppl_a = evaluate_perplexity(*a.model, tokens, 256, 8).ppl;
  const double ppl_b = evaluate_perplexity(*b.model, tokens, 256, 8).ppl;
  EXPECT_NEAR(ppl_b / ppl_a, 1.0, 1e-4) << ppl_a << " vs " << ppl_b;
  std::printf(
      "%lld of %lld trained entries differ by over 1e-5 of their tensor's largest; perplexity %.6f "
      "(1 rank) vs %.6f (2 ranks)\n",
      (long long)d.differing, (long long)d.entries, ppl_a, ppl_b);
  fs::remove_all(dir);
}

TEST(DataParallel, BlockwiseDistillationOnTwoRanksWritesTheSingleProcessFile) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const fs::path dir = testing::temp_dir("dp-blockwise");
  const fs::path one = dir / "one.gguf", two = dir / "two.gguf";
  const auto single = testing::run_command(qat_command(one, 2, "--blockwise"));
  ASSERT_EQ(single.exit_code, 0) << single.err;
  const auto ranks = run_together(two_rank_commands(two, 2, "--blockwise"), dir);
  for (const auto& r : ranks) ASSERT_EQ(r.exit_code, 0) << r.err;
  // Blocks train independently, each on one rank, on the same windows as in one process.
  EXPECT_TRUE(testing::file_bytes(one) == testing::file_bytes(two))
      << "block-wise distillation on two ranks wrote another file than one process";
  const ModelBundle trained = load_model(one);
  EXPECT_NE(trained.compression_json.find("\"distill\":\"blockwise\""), std::string::npos);
  fs::remove_all(dir);
}

TEST(DataParallel, ARankThatDiesStopsTheOtherAndARerunResumesToTheUninterruptedFile) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const fs::path dir = testing::temp_dir("dp-kill");
  const fs::path reference = dir / "reference.gguf", out = dir / "out.gguf";
  const std::string every = "--checkpoint-every 2 ";
  auto ranks = run_together(two_rank_commands(reference, 2, every), dir);
  for (const auto& r : ranks) ASSERT_EQ(r.exit_code, 0) << r.err;

  // Rank 1 is killed once rank 0 has written its first checkpoint.
  const int port = free_port();
  const fs::path checkpoint = out.string() + ".ckpt";
  const std::string script =
      qat_command(out, 2, every + rank_flags(0, 2, port)) + " >" + (dir / "r0.out").string() +
      " 2>" + (dir / "r0.err").string() + " & r0=$!; " +
      qat_command(out, 2, every + rank_flags(1, 2, port)) + " >/dev/null 2>&1 & r1=$!; " +
      "for i in $(seq 1200); do [ -e " + checkpoint.string() +
      " ] && break; sleep 0.05; done; kill -9 $r1; wait $r0; echo $? >" + (dir / "r0.rc").string();
  std::system(("bash -c '" + script + "'").c_str());
  EXPECT_TRUE(fs::exists(checkpoint)) << "rank 0 wrote no checkpoint";
  EXPECT_EQ(std::atoi(testing::file_bytes(dir / "r0.rc").c_str()), 1);
  const std::string error = testing::file_bytes(dir / "r0.err");
  EXPECT_NE(error.find("error: rank 0 of 2:"), std::string::npos) << error;
  EXPECT_NE(error.find("failed"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(out)) << "the run that lost a rank wrote an output";

  ranks = run_together(two_rank_commands(out, 2, every), dir);
  for (const auto& r : ranks) ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(ranks[0].out.find("(resumed at step"), std::string::npos) << ranks[0].out;
  EXPECT_TRUE(testing::file_bytes(out) == testing::file_bytes(reference))
      << "the resumed two-rank run wrote another file than the uninterrupted one";
  EXPECT_FALSE(fs::exists(checkpoint));
  fs::remove_all(dir);
}

TEST(DataParallel, ARankWhoseOthersNeverComeFailsAfterTheTimeout) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const fs::path dir = testing::temp_dir("dp-alone");
  const auto r = testing::run_command(
      qat_command(dir / "out.gguf", 2, rank_flags(0, 2, free_port()) + " --dist-timeout 2"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("rank 0 of 2: could not join the ranks at 127.0.0.1:"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("within 2 s"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "out.gguf"));
  fs::remove_all(dir);
}

TEST(DataParallel, RanksWithDifferentTrainingOptionsAreRefused) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  SKIP_UNLESS_EXISTS(calib_text());
  const fs::path dir = testing::temp_dir("dp-differ");
  const int port = free_port();
  const auto ranks =
      run_together({qat_command(dir / "out.gguf", 2, rank_flags(0, 2, port)),
                    qat_command(dir / "out.gguf", 2, rank_flags(1, 2, port) + " --seed 5")},
                   dir);
  EXPECT_EQ(ranks[0].exit_code, 1);
  EXPECT_EQ(ranks[1].exit_code, 1);
  EXPECT_NE(ranks[1].err.find("rank 1 of 2: training options differ from rank 0's"),
            std::string::npos)
      << ranks[1].err;
  EXPECT_NE(ranks[1].err.find("seed=5"), std::string::npos) << ranks[1].err;
  EXPECT_NE(ranks[0].err.find("rank 0 of 2: another rank's training options differ"),
            std::string::npos)
      << ranks[0].err;
  EXPECT_FALSE(fs::exists(dir / "out.gguf"));
  fs::remove_all(dir);
}

TEST(DataParallel, SeveralRanksNeedTraining) {
  SKIP_UNLESS_EXISTS(model_dir("sb-8m") / "config.json");
  const fs::path dir = testing::temp_dir("dp-ptq");
  const auto r = testing::run_command(
      testing::cli_path().string() + " compress " + model_dir("sb-8m").string() +
      " --method littlebit --bpw 0.3 --world-size 2 -o " + (dir / "out.gguf").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("only QAT runs on several ranks"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
