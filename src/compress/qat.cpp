#include "compress/qat.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>

#include "common/error.h"
#include "io/text_file.h"

namespace subbit::compress {

namespace {

std::string read_xz_prefix(const std::filesystem::path& file, size_t max_bytes) {
  if (!std::filesystem::exists(file)) fail("{}: no such file", file.string());
  const std::string command = fmt::format("xz -dc -- '{}' 2>/dev/null", file.string());
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) fail("{}: cannot run xz", file.string());
  std::string text;
  std::vector<char> buffer(1 << 16);
  while (text.size() < max_bytes) {
    const size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe);
    if (n == 0) break;
    text.append(buffer.data(), n);
  }
  const int status = ::pclose(pipe);
  // Closing early makes xz die of SIGPIPE; only a failure before we had enough is an error.
  if (text.size() < max_bytes && status != 0)
    fail("{}: xz failed (is it a valid .xz file?)", file.string());
  if (text.size() > max_bytes) text.resize(max_bytes);
  // Do not cut a UTF-8 character in half.
  while (!text.empty() && (static_cast<unsigned char>(text.back()) & 0xC0) == 0x80) text.pop_back();
  if (!text.empty() && static_cast<unsigned char>(text.back()) >= 0xC0) text.pop_back();
  if (const size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
    fail("{}: not valid UTF-8 (first bad byte at offset {})", file.string(), bad);
  return text;
}

std::string read_checkpoint(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) fail("{}: cannot read the checkpoint", path.string());
  return bytes;
}

double lr_at(int64_t step, int64_t total, const QatOptions& o) {
  const int64_t warmup = std::max<int64_t>(1, int64_t(o.warmup_fraction * double(total)));
  if (step < warmup) return o.lr * double(step + 1) / double(warmup);
  const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  return o.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

// The loss history travels with the checkpoint so a resumed run reports (and writes into the
// file's metadata) exactly what an uninterrupted one would.
void save_checkpoint(const std::filesystem::path& path, TorchLlama& student,
                     torch::optim::Optimizer& optimizer, int64_t step,
                     const std::vector<double>& losses, int world_size) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  student.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("student", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("step", torch::tensor(step));
  archive.write("losses", torch::tensor(losses, torch::kFloat64));
  archive.write("world_size", torch::tensor(int64_t(world_size)));
  const auto tmp = path.string() + ".tmp";
  archive.save_to(tmp);
  std::filesystem::rename(tmp, path);
}

// The windows at `positions` of the shuffled order, as a (positions, seq) batch of token ids.
torch::Tensor window_batch(std::span<const int32_t> tokens, const std::vector<int64_t>& order,
                           const std::vector<int64_t>& positions, int64_t seq,
                           torch::Device device) {
  const int64_t windows = int64_t(order.size()), batch = int64_t(positions.size());
  std::vector<int64_t> ids(batch * seq);  // (batch, seq)
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t window = order[positions[b] % windows];
    for (int64_t t = 0; t < seq; ++t) ids[b * seq + t] = tokens[window * seq + t];
  }
  return torch::tensor(ids, torch::kInt64).view({batch, seq}).to(device);
}

QatResult train_blockwise(TorchLlama& teacher, TorchLlama& student, std::span<const int32_t> tokens,
                          const std::vector<int64_t>& order, int64_t total_steps,
                          const QatOptions& o, DataParallel& ranks,
                          const std::function<void(const QatProgress&)>& progress) {
  const int64_t blocks = student.config().num_layers;
  const int64_t tokens_per_step = o.batch * o.seq;
  ranks.check_same_on_every_rank(
      "training options",
      fmt::format("blockwise tokens={} windows={} seq={} batch={} lr={} weight_decay={} "
                  "warmup={} train_norms={} seed={}",
                  o.train_tokens, order.size(), o.seq, o.batch, o.lr, o.weight_decay,
                  o.warmup_fraction, o.train_norms, o.seed));
  const auto owner = [&](int64_t block) { return int(block % ranks.world_size()); };
  int64_t owned = 0;
  for (int64_t l = 0; l < blocks; ++l) owned += owner(l) == ranks.rank();

  QatResult result;
  std::vector<double> first(blocks, 0.0), last(blocks, 0.0);  // this rank's blocks; 0 elsewhere
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;  // steps over this rank's blocks
  for (int64_t l = 0; l < blocks; ++l) {
    if (owner(l) != ranks.rank()) continue;
    std::vector<torch::Tensor> params;
    const std::vector<torch::Tensor> block_params = student.block_parameters(l);
    for (size_t i = 0; i < block_params.size(); ++i)  // the first two are the block's norms
      if (block_params[i].requires_grad() && (o.train_norms || i >= 2))
        params.push_back(block_params[i]);
    torch::optim::AdamW optimizer(params,
                                  torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
    std::vector<double> losses;
    for (int64_t step = 0; step < total_steps; ++step) {
      const torch::Tensor batch =
          window_batch(tokens, order, rank_window_positions(step, o.batch, 0, 1), o.seq, o.device);
      torch::Tensor input,
          target;  // (batch, seq, hidden): the teacher's input and output of block l
      {
        torch::NoGradGuard no_grad;
        input = teacher.embed(batch);
        for (int64_t j = 0; j < l; ++j) input = teacher.block(j, input);
        target = teacher.block(l, input);
      }
      for (auto& group : optimizer.param_groups())
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr_at(step, total_steps, o));
      optimizer.zero_grad();
      const torch::Tensor loss = torch::mse_loss(student.block(l, input), target);
      loss.backward();
      torch::nn::utils::clip_grad_norm_(params, 1.0);
      optimizer.step();
      losses.push_back(loss.item<double>());
      ++done;
      if (progress) progress({done, total_steps * owned, done * tokens_per_step, losses.back()});
    }
    // Done with this block: its gradients go with its optimizer's moments, so that one block's
    // training state is held at a time, not every trained block's gradients.
    for (torch::Tensor& p : params) p.mutable_grad().reset();
    const size_t tail = std::min<size_t>(10, losses.size());
    first[l] = losses.front();
    last[l] = std::accumulate(losses.end() - tail, losses.end(), 0.0) / double(tail);
  }
  // Every rank ends with every block: each block's parameters come from the rank that trained it.
  for (int64_t l = 0; l < blocks; ++l) ranks.broadcast(student.block_parameters(l), owner(l));
  double first_sum = 0, last_sum = 0;
  for (int64_t l = 0; l < blocks; ++l) {
    first_sum += ranks.sum(first[l]);
    last_sum += ranks.sum(last[l]);
  }
  result.steps = total_steps;
  result.tokens = total_steps * tokens_per_step;
  // Block-wise, the losses are each block's output MSE, averaged over blocks.
  result.first_loss = first_sum / double(blocks);
  result.last_loss = last_sum / double(blocks);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace

std::vector<int32_t> load_training_tokens(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, int64_t max_tokens) {
  std::vector<int32_t> tokens;
  for (const auto& file : files) {
    if (file.filename() == "wiki.test.raw")
      fail("{}: the WikiText-2 test split is for evaluation only; never train on it",
           file.string());
    // ~4.5 bytes per token in English BPE; read a margin more so max_tokens is reached.
    const size_t want_bytes =
        size_t(std::max<int64_t>(0, max_tokens - int64_t(tokens.size()))) * 6 + 4096;
    const std::string text =
        file.extension() == ".xz" ? read_xz_prefix(file, want_bytes) : read_text_file(file);
    const std::vector<int32_t> ids = tokenizer.encode(text);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    if (int64_t(tokens.size()) >= max_tokens) break;
  }
  if (int64_t(tokens.size()) > max_tokens) tokens.resize(max_tokens);
  return tokens;
}

torch::Tensor distillation_loss(TorchLlama& teacher, TorchLlama& student,
                                const torch::Tensor& tokens, double hidden_weight) {
  TorchOutput target;
  {
    torch::NoGradGuard no_grad;
    target = teacher.forward(tokens);
  }
  TorchOutput out = student.forward(tokens);
  const torch::Tensor teacher_logp = torch::log_softmax(target.logits, -1);
  const torch::Tensor student_logp = torch::log_softmax(out.logits, -1);
  torch::Tensor loss = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean();
  for (size_t l = 0; l < out.hidden.size(); ++l)
    loss = loss + hidden_weight * torch::mse_loss(out.hidden[l], target.hidden[l]);
  return loss;
}

QatResult train_qat(TorchLlama& teacher, TorchLlama& student, std::span<const int32_t> tokens,
                    const QatOptions& o, const std::function<void(const QatProgress&)>& progress) {
  DataParallel alone({});
  DataParallel& ranks = o.data_parallel ? *o.data_parallel : alone;
  const int64_t global_batch = o.sequences_per_step();
  const int64_t tokens_per_step = global_batch * o.seq;
  const int64_t windows = int64_t(tokens.size()) / o.seq;
  if (windows < global_batch)
    fail("training text has {} tokens: fewer than one batch of {} x {}", tokens.size(),
         global_batch, o.seq);
  if (o.seq > max_context(student.config()))
    fail("--seq {} exceeds the model's maximum context of {}", o.seq,
         max_context(student.config()));
  const int64_t total_steps = std::max<int64_t>(1, o.train_tokens / tokens_per_step);

  // A fixed permutation of windows (seeded) decides which data each step sees, so a resumed run
  // sees exactly what the uninterrupted one would have.
  std::vector<int64_t> order(windows);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(o.seed));

  teacher.to(o.device);
  student.to(o.device);
  teacher.eval();
  student.train();
  if (o.blockwise) {
    QatResult result =
        train_blockwise(teacher, student, tokens, order, total_steps, o, ranks, progress);
    student.to(torch::kCPU);
    teacher.to(torch::kCPU);
    return result;
  }
  std::vector<torch::Tensor> params;
  for (auto& p : student.named_parameters()) {
    // TorchLlama's own parameters are its norms (final_norm, attn_norm_L, mlp_norm_L); the
    // linears' parameters are named inside their modules ("linear_L_I.…").
    const bool norm = p.key().find('.') == std::string::npos;
    if (p.value().requires_grad() && (o.train_norms || !norm)) params.push_back(p.value());
  }
  torch::optim::AdamW optimizer(params,
                                torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  // Every rank must train the same student on its share of the same data order.
  ranks.check_same_on_every_rank(
      "training options",
      fmt::format("tokens={} windows={} seq={} batch={} lr={} weight_decay={} warmup={} "
                  "hidden_weight={} train_norms={} seed={} parameters={}",
                  o.train_tokens, windows, o.seq, o.batch, o.lr, o.weight_decay, o.warmup_fraction,
                  o.hidden_weight, o.train_norms, o.seed, params.size()));
  ranks.broadcast(params);

  QatResult result;
  int64_t step = 0;
  std::vector<double> losses;  // one per step, from the start of training
  // Rank 0 reads its checkpoint and hands the bytes to the others, which need no shared disk.
  std::string saved;
  if (ranks.is_root() && !o.checkpoint.empty() && std::filesystem::exists(o.checkpoint))
    saved = read_checkpoint(o.checkpoint);
  saved = ranks.broadcast_from_root(saved);
  if (!saved.empty()) {
    torch::serialize::InputArchive archive, model_archive, optimizer_archive;
    archive.load_from(saved.data(), saved.size(), o.device);
    archive.read("student", model_archive);
    archive.read("optimizer", optimizer_archive);
    student.load(model_archive);
    optimizer.load(optimizer_archive);
    torch::Tensor saved_step, saved_losses, saved_world;
    archive.read("step", saved_step);
    archive.read("losses", saved_losses);
    const int64_t saved_world_size =
        archive.try_read("world_size", saved_world) ? saved_world.item<int64_t>() : 1;
    if (saved_world_size != ranks.world_size())
      fail(
          "{}: the checkpoint was written by a run of {} rank(s), this run has {}: resume with the "
          "same world "
          "size (or delete the checkpoint to start over)",
          o.checkpoint.string(), saved_world_size, ranks.world_size());
    step = saved_step.item<int64_t>();
    saved_losses = saved_losses.to(torch::kCPU).contiguous();  // loaded onto o.device
    losses.assign(saved_losses.data_ptr<double>(),
                  saved_losses.data_ptr<double>() + saved_losses.numel());
    result.resumed_from_step = step;
  }

  struct SignTracker {
    std::string name;
    torch::Tensor latent, start, last, flips;
  };
  std::vector<SignTracker> signs;
  for (auto& p : student.named_parameters())
    if (p.key().ends_with("_u") || p.key().ends_with("_v")) {
      const torch::Tensor now = p.value().detach() >= 0;
      signs.push_back({p.key(), p.value(), now, now,
                       torch::zeros({}, torch::dtype(torch::kInt64).device(o.device))});
    }

  const auto start = std::chrono::steady_clock::now();
  for (; step < total_steps; ++step) {
    const torch::Tensor batch = window_batch(
        tokens, order, rank_window_positions(step, o.batch, ranks.rank(), ranks.world_size()),
        o.seq, o.device);
    for (auto& group : optimizer.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr_at(step, total_steps, o));
    optimizer.zero_grad();
    const torch::Tensor loss = distillation_loss(teacher, student, batch, o.hidden_weight);
    loss.backward();
    std::vector<torch::Tensor> grads;
    for (const torch::Tensor& p : params)
      if (p.grad().defined()) grads.push_back(p.grad());
    ranks.average(grads);
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    optimizer.step();
    for (SignTracker& t : signs) {
      const torch::Tensor now = t.latent.detach() >= 0;
      t.flips += (now != t.last).sum();
      t.last = now;
    }

    losses.push_back(ranks.average(loss.item<double>()));
    if (progress) progress({step + 1, total_steps, (step + 1) * tokens_per_step, losses.back()});
    if (ranks.is_root() && !o.checkpoint.empty() && ((step + 1) % o.checkpoint_every == 0) &&
        step + 1 < total_steps)
      save_checkpoint(o.checkpoint, student, optimizer, step + 1, losses, ranks.world_size());
  }
  student.to(torch::kCPU);
  teacher.to(torch::kCPU);
  result.steps = total_steps;
  result.tokens = total_steps * tokens_per_step;
  const size_t last = std::min<size_t>(10, losses.size());
  result.first_loss = losses.empty() ? NAN : losses.front();
  result.last_loss =
      last == 0 ? NAN : std::accumulate(losses.end() - last, losses.end(), 0.0) / double(last);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const SignTracker& t : signs)
    result.sign_flips.push_back({t.name, t.latent.numel(), t.flips.item<int64_t>(),
                                 (t.last != t.start).sum().item<int64_t>()});
  return result;
}

}  // namespace subbit::compress
