#include "server/engine.h"

#include <algorithm>

#include "common/error.h"
#include "io/text_file.h"

namespace subbit::server {

namespace {

// Prompt tokens fed per step: long prompts are prefilled in chunks so that other streams keep
// getting tokens meanwhile.
constexpr int64_t kPrefillChunk = 128;
// Prompt tokens decoded in front of the completion, so that a tokenizer that renders a token
// differently at the start of a text (SentencePiece's leading space) decodes it as it continues.
constexpr size_t kDecodeContext = 4;

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Failed:
      return "error";
    case FinishReason::None:
      break;
  }
  return "";
}

Job::Update Job::take_locked() {
  Update u;
  u.text = std::move(pending_);
  pending_.clear();
  u.finish = finish_;
  u.prompt_tokens = prompt_tokens_;
  u.completion_tokens = completion_tokens_;
  u.error = error_;
  return u;
}

Job::Update Job::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout,
                    [&] { return !pending_.empty() || finish_ != FinishReason::None; });
  return take_locked();
}

Job::Update Job::wait_all() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return finish_ != FinishReason::None; });
  return take_locked();
}

void Job::publish(const std::string& text, FinishReason finish, int64_t completion_tokens,
                  const std::string& error) {
  {
    std::lock_guard lock(mutex_);
    pending_ += text;
    completion_tokens_ = completion_tokens;
    if (finish != FinishReason::None) {
      finish_ = finish;
      error_ = error;
    }
  }
  changed_.notify_all();
}

struct Engine::Slot {
  Slot(const LlamaConfig& config, int64_t context)
      : state(config, context), logits(config.vocab_size) {}
  RunState state;  // keys, values and activation scratch of this slot's sequence
  std::vector<float> logits;
  std::shared_ptr<Job> job;  // null when free
  CompletionRequest request;
  Sampler sampler{SamplingParams{}};
  int64_t fed = 0;               // prompt tokens already in the cache
  std::vector<int32_t> decoded;  // decode context (prompt tail) + completion tokens
  size_t context_tokens = 0;     // how many of `decoded` are prompt context
  size_t context_bytes = 0;      // their decoded length
  size_t emitted = 0;            // completion bytes already published
  int64_t completion_tokens = 0;
};

Engine::Engine(const LlamaModel& model, const Tokenizer& tokenizer, int slots, int64_t context,
               size_t max_queue)
    : model_(model), tokenizer_(tokenizer), context_(context), max_queue_(max_queue) {
  for (int i = 0; i < slots; ++i) slots_.push_back(std::make_unique<Slot>(model.config(), context));
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() { stop(); }

std::shared_ptr<Job> Engine::submit(CompletionRequest request) {
  if (request.prompt.empty() || int64_t(request.prompt.size()) >= context_)
    fail("the prompt has {} tokens; a slot holds 1 to {}", request.prompt.size(), context_ - 1);
  auto job = std::make_shared<Job>();
  job->prompt_tokens_ = int64_t(request.prompt.size());
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return nullptr;
    const size_t free_slots = size_t(int(slots_.size()) - busy_);
    if (queue_.size() >= free_slots + max_queue_) return nullptr;
    queue_.emplace_back(job, std::move(request));
  }
  wake_.notify_one();
  return job;
}

Engine::Load Engine::load() {
  std::lock_guard lock(mutex_);
  return {int(slots_.size()), busy_, queue_.size()};
}

void Engine::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  for (auto& [job, request] : queue_) job->publish("", FinishReason::Cancelled, 0);
  queue_.clear();
}

void Engine::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || busy_ > 0 || !queue_.empty(); });
      if (stopping_) break;
      for (auto& slot : slots_) {
        if (slot->job || queue_.empty()) continue;
        auto [job, request] = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
        slot->job = std::move(job);
        slot->request = std::move(request);
        slot->request.max_tokens =
            std::min(slot->request.max_tokens, context_ - int64_t(slot->request.prompt.size()));
        slot->sampler = Sampler(slot->request.sampling);
        slot->fed = 0;
        const auto& prompt = slot->request.prompt;
        const size_t context_tokens = std::min(kDecodeContext, prompt.size());
        slot->decoded.assign(prompt.end() - long(context_tokens), prompt.end());
        slot->context_tokens = context_tokens;
        slot->context_bytes = tokenizer_.decode(slot->decoded).size();
        slot->emitted = 0;
        slot->completion_tokens = 0;
      }
    }
    for (auto& slot : slots_) {
      if (!slot->job) continue;
      if (slot->job->cancelled()) {
        finish(*slot, FinishReason::Cancelled, "");
        continue;
      }
      try {
        step(*slot);
      } catch (const std::exception& e) {
        finish(*slot, FinishReason::Failed, "", e.what());
      }
    }
  }
  for (auto& slot : slots_)
    if (slot->job) finish(*slot, FinishReason::Cancelled, "");
}

std::string Engine::completion_text(const Slot& slot) const {
  const std::string all = tokenizer_.decode(slot.decoded);
  return all.substr(std::min(slot.context_bytes, all.size()));
}

void Engine::finish(Slot& slot, FinishReason reason, const std::string& rest,
                    const std::string& error) {
  slot.job->publish(rest, reason, slot.completion_tokens, error);
  slot.job.reset();
  std::lock_guard lock(mutex_);
  --busy_;
}

void Engine::step(Slot& slot) {
  const auto& prompt = slot.request.prompt;
  const int64_t vocab = model_.config().vocab_size;
  if (slot.fed < int64_t(prompt.size())) {
    const int64_t n = std::min<int64_t>(kPrefillChunk, int64_t(prompt.size()) - slot.fed);
    model_.forward(std::span<const int32_t>(prompt.data() + slot.fed, size_t(n)), slot.fed,
                   slot.state, slot.logits.data(), /*all_logits=*/false);
    slot.fed += n;
    if (slot.fed < int64_t(prompt.size())) return;
  } else {
    const int32_t last = slot.decoded.back();
    const int64_t position = int64_t(prompt.size()) + slot.completion_tokens - 1;
    model_.forward(std::span<const int32_t>(&last, 1), position, slot.state, slot.logits.data(),
                   false);
  }

  const int32_t token = slot.sampler.sample(slot.logits.data(), vocab);
  const auto& stop_tokens = slot.request.stop_tokens;
  const bool end_token =
      std::find(stop_tokens.begin(), stop_tokens.end(), token) != stop_tokens.end();
  if (!end_token) {
    slot.decoded.push_back(token);
    ++slot.completion_tokens;
  }
  const std::string text = completion_text(slot);
  // A stop string ends the text where it starts.
  for (const std::string& stop : slot.request.stop_strings) {
    const size_t from = slot.emitted >= stop.size() ? slot.emitted - stop.size() + 1 : 0;
    const size_t at = text.find(stop, from);
    if (at != std::string::npos) {
      finish(slot, FinishReason::Stop,
             at > slot.emitted ? text.substr(slot.emitted, at - slot.emitted) : "");
      return;
    }
  }
  const std::string rest = text.size() > slot.emitted ? text.substr(slot.emitted) : "";
  if (end_token) {
    finish(slot, FinishReason::Stop, rest);
    return;
  }
  if (slot.completion_tokens >= slot.request.max_tokens) {
    finish(slot, FinishReason::Length, rest);
    return;
  }
  // Hold back a split UTF-8 character and any tail that may be the start of a stop string.
  const size_t complete = complete_utf8_prefix(text);
  size_t hold = 0;
  for (const std::string& stop : slot.request.stop_strings)
    for (size_t keep = std::min(stop.size() - 1, complete); keep > hold; --keep)
      if (text.compare(complete - keep, keep, stop, 0, keep) == 0) {
        hold = keep;
        break;
      }
  const size_t ready = complete - hold;
  if (ready > slot.emitted) {
    slot.job->publish(text.substr(slot.emitted, ready - slot.emitted), FinishReason::None,
                      slot.completion_tokens);
    slot.emitted = ready;
  }
}

}  // namespace subbit::server
