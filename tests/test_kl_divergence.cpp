// KL-divergence against a reference: the per-position arithmetic, the saved base file (round
// trip, precision, rejection of malformed files) and `subbit ppl --kl-divergence` end to end.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "model/kl_divergence.h"
#include "test_support.h"

namespace subbit {
namespace {

using testing::cli;
using testing::expect_clean_failure;
using testing::model_dir;

namespace fs = std::filesystem;
using testing::run_command;

// KL(P || Q) straight from the definition, for comparison.
double direct_kld(const std::vector<float>& p_logits, const std::vector<float>& q_logits) {
  auto probs = [](const std::vector<float>& l) {
    std::vector<double> p(l.size());
    double sum = 0;
    for (size_t i = 0; i < l.size(); ++i) sum += p[i] = std::exp(double(l[i]));
    for (double& v : p) v /= sum;
    return p;
  };
  const auto p = probs(p_logits), q = probs(q_logits);
  double kld = 0;
  for (size_t i = 0; i < p.size(); ++i) kld += p[i] * std::log(p[i] / q[i]);
  return kld;
}

std::vector<float> random_logits(size_t n, std::mt19937& rng, float scale) {
  std::vector<float> v = testing::random_vector(n, rng);
  for (float& x : v) x *= scale;
  return v;
}

TEST(KlDivergence, ExactAgainstDefinitionOnAwkwardSizes) {
  std::mt19937 rng(1);
  for (size_t vocab : {1, 2, 3, 17, 1000, 4099}) {
    const auto p = random_logits(vocab, rng, 3.0f), q = random_logits(vocab, rng, 3.0f);
    const int32_t target = int32_t(vocab / 2);
    const PositionKld same = position_kld(p.data(), p.data(), int64_t(vocab), target);
    EXPECT_NEAR(same.kld, 0.0, 1e-12) << vocab;
    EXPECT_TRUE(same.same_top1);
    EXPECT_DOUBLE_EQ(same.nll, same.reference_nll);
    const PositionKld r = position_kld(p.data(), q.data(), int64_t(vocab), target);
    EXPECT_NEAR(r.kld, direct_kld(p, q), 1e-9 * std::max(1.0, r.kld)) << vocab;
    if (vocab > 1) {
      EXPECT_GT(r.kld, 0.0) << vocab;
    }
  }
}

TEST(KlDivergence, Percentiles) {
  const std::vector<float> sorted = {0, 1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(sorted_percentile(sorted, 0.5), 2.0);
  EXPECT_DOUBLE_EQ(sorted_percentile(sorted, 0.9), 3.6);
  EXPECT_DOUBLE_EQ(sorted_percentile(sorted, 1.0), 4.0);
  EXPECT_DOUBLE_EQ(sorted_percentile(std::vector<float>{7}, 0.99), 7.0);
}

TEST(KlDivergence, AccumulatorStatistics) {
  KldAccumulator acc;
  for (int i = 0; i < 4; ++i) acc.add({double(i), i % 2 == 0, 2.0 + i, 1.0 + i, 0.0});
  const KldResult r = acc.finish();
  EXPECT_EQ(r.scored_tokens, 4);
  EXPECT_DOUBLE_EQ(r.kld_mean, 1.5);
  EXPECT_NEAR(r.kld_stderr, std::sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4), 1e-12);
  EXPECT_DOUBLE_EQ(r.kld_median, 1.5);
  EXPECT_DOUBLE_EQ(r.kld_max, 3.0);
  EXPECT_DOUBLE_EQ(r.top1_agreement, 0.5);
  EXPECT_NEAR(r.ppl, std::exp(3.5), 1e-9);
  EXPECT_NEAR(r.reference_ppl, std::exp(2.5), 1e-9);
  EXPECT_NEAR(r.ppl_ratio, std::exp(1.0), 1e-9);
  EXPECT_NEAR(r.ln_ppl_ratio_stderr, 0.0, 1e-12);  // the NLL difference is constant
}

// Writes a base of `windows` windows of random logits; returns the logits (window, pos, vocab).
struct SyntheticBase {
  int64_t vocab = 300, ctx = 7, windows = 2;
  std::vector<int32_t> tokens;
  std::vector<float> reference, model;  // (windows * (ctx-1), vocab)

  explicit SyntheticBase(std::mt19937& rng) {
    tokens.resize(windows * ctx);
    for (auto& t : tokens) t = int32_t(rng() % vocab);
    reference = random_logits(windows * (ctx - 1) * vocab, rng, 4.0f);
    model = reference;
    for (float& x : model) x += 0.5f * std::normal_distribution<float>()(rng);
  }
  void write(const fs::path& file, int64_t top_k) const {
    KldBaseWriter writer(file, vocab, ctx, windows, top_k);
    for (int64_t w = 0; w < windows; ++w) {
      const std::span<const int32_t> window(tokens.data() + w * ctx, ctx);
      // Two chunks per window, as the scorer delivers long windows.
      writer.add_chunk(w, window, 0, 4, reference.data() + (w * (ctx - 1)) * vocab);
      writer.add_chunk(w, window, 4, ctx - 5, reference.data() + (w * (ctx - 1) + 4) * vocab);
    }
    writer.commit();
  }
};

TEST(KlDivergence, BaseWithWholeVocabularyEqualsExact) {
  std::mt19937 rng(2);
  const SyntheticBase s(rng);
  const fs::path file = testing::temp_dir("kld") / "full.kld";
  s.write(file, 100000);  // clamped to the vocabulary: every token stored
  KldBase base(file);
  EXPECT_EQ(base.top_k(), s.vocab);
  for (int64_t w = 0; w < s.windows; ++w) {
    const auto saved = base.window_tokens(w);
    EXPECT_TRUE(std::equal(saved.begin(), saved.end(), s.tokens.begin() + w * s.ctx));
    for (int64_t p = 0; p < s.ctx - 1; ++p) {
      const int64_t row = (w * (s.ctx - 1) + p) * s.vocab;
      const int32_t target = s.tokens[w * s.ctx + p + 1];
      const PositionKld exact = position_kld(&s.reference[row], &s.model[row], s.vocab, target);
      const PositionKld saved_kld =
          position_kld(base.position(w, p), &s.model[row], s.vocab, target);
      // float32 log-probabilities: agreement to ~1e-6 relative
      EXPECT_NEAR(saved_kld.kld, exact.kld, 1e-5 * exact.kld + 1e-7);
      EXPECT_NEAR(saved_kld.reference_nll, exact.reference_nll, 1e-5);
      EXPECT_EQ(saved_kld.same_top1, exact.same_top1);
      EXPECT_EQ(saved_kld.rest_mass, 0.0);
    }
  }
}

TEST(KlDivergence, TopKBaseIsALowerBoundWithExactTop1AndPerplexity) {
  std::mt19937 rng(3);
  const SyntheticBase s(rng);
  const fs::path file = testing::temp_dir("kld") / "top8.kld";
  s.write(file, 8);
  KldBase base(file);
  for (int64_t p = 0; p < s.ctx - 1; ++p) {
    const int64_t row = p * s.vocab;
    const int32_t target = s.tokens[p + 1];
    const PositionKld exact = position_kld(&s.reference[row], &s.model[row], s.vocab, target);
    const PositionKld coarse = position_kld(base.position(0, p), &s.model[row], s.vocab, target);
    EXPECT_LE(coarse.kld, exact.kld + 1e-6);
    EXPECT_GT(coarse.kld, 0.0);
    EXPECT_GT(coarse.rest_mass, 0.0);
    EXPECT_EQ(coarse.same_top1, exact.same_top1);
    EXPECT_NEAR(coarse.reference_nll, exact.reference_nll, 1e-5);
    EXPECT_DOUBLE_EQ(coarse.nll, exact.nll);
  }
}

// Writes a valid base, applies `corrupt` to its bytes and expects KldBase (or reading position
// (0, 0)) to fail with a message naming the file and containing `fragment`.
void expect_rejected(const std::function<void(std::vector<char>&)>& corrupt,
                     const std::string& fragment) {
  std::mt19937 rng(4);
  const SyntheticBase s(rng);
  const fs::path file = testing::temp_dir("kld") / "bad.kld";
  s.write(file, 4);
  std::vector<char> bytes(fs::file_size(file));
  std::ifstream(file, std::ios::binary).read(bytes.data(), std::streamsize(bytes.size()));
  corrupt(bytes);
  std::ofstream(file, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), std::streamsize(bytes.size()));
  try {
    KldBase base(file);
    base.position(0, 0);
    ADD_FAILURE() << "accepted a base corrupted to trigger: " << fragment;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file.string()), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

// Offsets in a base of ctx 7, top_k 4: header 40 bytes, 7 token ids, then records of
// (target, rest, 4 ids, 4 log-probs).
constexpr size_t kFirstRecord = 40 + 7 * 4;
template <typename T>
void poke(std::vector<char>& bytes, size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

TEST(KlDivergence, MalformedBasesRejected) {
  expect_rejected([](auto& b) { b[0] = 'X'; }, "not a subbit KL-divergence base");
  expect_rejected([](auto& b) { b.resize(20); }, "not a subbit KL-divergence base");
  expect_rejected([](auto& b) { poke<uint32_t>(b, 8, 9); }, "version 9");
  expect_rejected([](auto& b) { b.pop_back(); }, "truncated");
  expect_rejected([](auto& b) { poke<uint32_t>(b, 12, 0); }, "top_k");
  expect_rejected([](auto& b) { poke<uint64_t>(b, 24, 1); }, "ctx");
  expect_rejected([](auto& b) { poke<uint64_t>(b, 32, uint64_t(1) << 40); }, "window count");
  expect_rejected([](auto& b) { poke<float>(b, kFirstRecord, NAN); }, "target log-probability");
  expect_rejected([](auto& b) { poke<float>(b, kFirstRecord + 4, 1.0f); }, "remaining mass");
  expect_rejected([](auto& b) { poke<int32_t>(b, kFirstRecord + 8, 300); },
                  "outside the vocabulary");
  expect_rejected([](auto& b) { poke<int32_t>(b, kFirstRecord + 8, -1); },
                  "outside the vocabulary");
  expect_rejected(
      [](auto& b) {
        int32_t second;
        std::memcpy(&second, b.data() + kFirstRecord + 12, 4);
        poke<int32_t>(b, kFirstRecord + 8, second);
      },
      "listed twice");
  expect_rejected([](auto& b) { poke<float>(b, kFirstRecord + 24 + 4, 0.0f); }, "order");
  expect_rejected([](auto& b) { poke<float>(b, kFirstRecord + 24, -50.0f); }, "order");
  expect_rejected([](auto& b) { poke<float>(b, kFirstRecord + 4, -30.0f); }, "sum to");
}

TEST(KlDivergence, FailedWriteLeavesNoFile) {
  const fs::path file = testing::temp_dir("kld") / "never.kld";
  {
    KldBaseWriter writer(file, 10, 4, 2, 3);  // two windows promised, none written
    EXPECT_THROW(writer.commit(), Error);
  }
  EXPECT_FALSE(fs::exists(file));
}

// ---- end to end, on stories260K (tiny and fast) ----

fs::path text_file() { return testing::shared_dir() / "text" / "tinystories_validation_100.txt"; }

nlohmann::json last_json_line(const std::string& out) {
  return nlohmann::json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1));
}

// stories260K with a different rope_theta: same weights and tokenizer, perturbed outputs.
fs::path perturbed_model() {
  const fs::path dir = testing::temp_dir("perturbed");
  for (const auto& entry : fs::directory_iterator(model_dir("stories260K")))
    if (entry.path().filename() != "config.json")
      fs::create_symlink(entry.path(), dir / entry.path().filename());
  auto config = nlohmann::json::parse(std::ifstream(model_dir("stories260K") / "config.json"));
  config["rope_theta"] = 300.0;
  std::ofstream(dir / "config.json") << config.dump();
  return dir;
}

std::string ppl_command(const fs::path& model, const std::string& extra) {
  return cli() + " ppl " + model.string() + " --text " + text_file().string() +
         " --ctx 128 --max-windows 3 -t 2 --json " + extra;
}

TEST(KlDivergenceCli, ModelAgainstItselfIsZero) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  SKIP_UNLESS_EXISTS(text_file());
  const auto r = run_command(ppl_command(model_dir("stories260K"),
                                         "--kl-divergence " + model_dir("stories260K").string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = last_json_line(r.out);
  EXPECT_EQ(j["scored_tokens"], 3 * 127);
  EXPECT_NEAR(j["kld_mean"].get<double>(), 0.0, 1e-9);
  EXPECT_NEAR(j["kld_p999"].get<double>(), 0.0, 1e-9);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 1.0);
  EXPECT_NEAR(j["ppl_ratio"].get<double>(), 1.0, 1e-12);
  EXPECT_EQ(j["ppl"].get<double>(), j["reference_ppl"].get<double>());
  EXPECT_EQ(j["reference_top_k"], 0);
  EXPECT_NE(r.out.find("top-1 agreement = 100.000%"), std::string::npos) << r.out;
}

TEST(KlDivergenceCli, PerturbedModelAndSavedBaseAgree) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  SKIP_UNLESS_EXISTS(text_file());
  const fs::path perturbed = perturbed_model();
  const auto exact =
      run_command(ppl_command(perturbed, "--kl-divergence " + model_dir("stories260K").string()));
  ASSERT_EQ(exact.exit_code, 0) << exact.err;
  const auto e = last_json_line(exact.out);
  EXPECT_GT(e["kld_mean"].get<double>(), 1e-3);
  EXPECT_GT(e["kld_stderr"].get<double>(), 0.0);
  EXPECT_LT(e["top1_agreement"].get<double>(), 1.0);
  EXPECT_LE(e["kld_median"].get<double>(), e["kld_p90"].get<double>());
  EXPECT_LE(e["kld_p90"].get<double>(), e["kld_p99"].get<double>());
  EXPECT_LE(e["kld_p99"].get<double>(), e["kld_p999"].get<double>());
  EXPECT_NEAR(e["ppl_ratio"].get<double>(),
              e["ppl"].get<double>() / e["reference_ppl"].get<double>(), 1e-9);

  const fs::path dir = testing::temp_dir("kld-cli");
  for (const int top_k : {512, 16}) {  // 512 = the whole vocabulary of stories260K
    const fs::path base = dir / fmt::format("top{}.kld", top_k);
    const auto save = run_command(
        ppl_command(model_dir("stories260K"),
                    fmt::format("--save-logits {} --save-top-k {}", base.string(), top_k)));
    ASSERT_EQ(save.exit_code, 0) << save.err;
    // The saved run is the reference's own perplexity.
    EXPECT_NEAR(last_json_line(save.out)["ppl"].get<double>(), e["reference_ppl"].get<double>(),
                1e-9 * e["reference_ppl"].get<double>());
    const auto from_base =
        run_command(cli() + " ppl " + perturbed.string() + " --text " + text_file().string() +
                    " --max-windows 3 -t 2 --json " + "--kl-divergence-base " + base.string());
    ASSERT_EQ(from_base.exit_code, 0) << from_base.err;
    const auto b = last_json_line(from_base.out);
    EXPECT_EQ(b["ctx"], 128);  // taken from the base
    EXPECT_EQ(b["reference_top_k"], top_k);
    EXPECT_EQ(b["top1_agreement"], e["top1_agreement"]);
    EXPECT_NEAR(b["ppl"].get<double>(), e["ppl"].get<double>(), 1e-9 * e["ppl"].get<double>());
    EXPECT_NEAR(b["reference_ppl"].get<double>(), e["reference_ppl"].get<double>(),
                1e-5 * e["reference_ppl"].get<double>());
    if (top_k == 512) {
      EXPECT_NEAR(b["kld_mean"].get<double>(), e["kld_mean"].get<double>(),
                  1e-5 * e["kld_mean"].get<double>());
      EXPECT_NEAR(b["kld_p99"].get<double>(), e["kld_p99"].get<double>(),
                  1e-4 * e["kld_p99"].get<double>());
      EXPECT_EQ(b["reference_rest_mass"].get<double>(), 0.0);
    } else {
      EXPECT_LE(b["kld_mean"].get<double>(), e["kld_mean"].get<double>() * (1 + 1e-6));
      EXPECT_GT(b["kld_mean"].get<double>(), 0.5 * e["kld_mean"].get<double>());
      EXPECT_GT(b["reference_rest_mass"].get<double>(), 0.0);
    }
  }
  fs::remove_all(dir);
  fs::remove_all(perturbed);
}

TEST(KlDivergenceCli, BadBasesAndMismatchesRejected) {
  SKIP_UNLESS_EXISTS(model_dir("stories260K") / "config.json");
  SKIP_UNLESS_EXISTS(text_file());
  const fs::path dir = testing::temp_dir("kld-bad");
  const fs::path garbage = dir / "garbage.kld";
  std::ofstream(garbage) << "this is not a base file, just text long enough for a header";
  expect_clean_failure(run_command(ppl_command(model_dir("stories260K"),
                                               "--kl-divergence-base " + garbage.string())),
                       "not a subbit KL-divergence base");
  expect_clean_failure(
      run_command(ppl_command(model_dir("stories260K"),
                              "--kl-divergence-base " + (dir / "absent.kld").string())),
      "absent.kld");

  const fs::path base = dir / "base.kld";
  ASSERT_EQ(run_command(ppl_command(model_dir("stories260K"), "--save-logits " + base.string()))
                .exit_code,
            0);
  // Another --ctx than the base's.
  expect_clean_failure(
      run_command(cli() + " ppl " + model_dir("stories260K").string() + " --text " +
                  text_file().string() + " --ctx 64 --kl-divergence-base " + base.string()),
      "saved with --ctx 128");
  // Another text: the windows hold other tokens.
  const fs::path other = dir / "other.txt";
  {
    std::ifstream in(text_file());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(other) << "Once upon a time. " << text;
  }
  expect_clean_failure(
      run_command(cli() + " ppl " + model_dir("stories260K").string() + " --text " +
                  other.string() + " --kl-divergence-base " + base.string()),
      "other tokens");
  // A truncated base.
  fs::resize_file(base, fs::file_size(base) - 3);
  expect_clean_failure(
      run_command(ppl_command(model_dir("stories260K"), "--kl-divergence-base " + base.string())),
      "truncated");
  // A reference with another vocabulary.
  if (fs::exists(model_dir("sb-8m") / "config.json"))
    expect_clean_failure(run_command(ppl_command(model_dir("stories260K"),
                                                 "--kl-divergence " + model_dir("sb-8m").string())),
                         "differently");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace subbit
