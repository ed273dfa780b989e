#pragma once
// The server's inference engine: N slots, each with its own KV cache, fed from a bounded queue
// and advanced by one inference thread that takes one step of every busy slot in turn (a chunk
// of prompt, or one new token). The model's forward pass runs one sequence at a time and its
// kernels already use every core, so interleaving keeps all streams moving without
// oversubscribing the CPU. It knows nothing about HTTP: requests are token ids in, text out.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/generate.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace subbit::server {

struct CompletionRequest {
  std::vector<int32_t> prompt;  // at least one token, fewer than the context
  int64_t max_tokens = 16;      // the engine clips it to the context left
  SamplingParams sampling;
  std::vector<std::string> stop_strings;  // end the text before the first occurrence
  std::vector<int32_t> stop_tokens;       // end of turn / sequence; not part of the text
};

enum class FinishReason { None, Stop, Length, Cancelled, Failed };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", ...

// One request's progress, shared between the engine (writer) and its HTTP handler (reader).
class Job {
 public:
  struct Update {
    std::string text;  // new text since the previous update
    FinishReason finish = FinishReason::None;
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
    std::string error;  // FinishReason::Failed
  };
  // Waits up to `timeout` for new text or the end; returns what is there (maybe nothing).
  Update wait(std::chrono::milliseconds timeout);
  // Waits for the end and returns all text not yet taken.
  Update wait_all();
  // Asks the engine to drop the request (the client went away); it stops at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Engine;
  void publish(const std::string& text, FinishReason finish, int64_t completion_tokens,
               const std::string& error = {});
  Update take_locked();

  std::mutex mutex_;
  std::condition_variable changed_;
  std::string pending_;
  FinishReason finish_ = FinishReason::None;
  int64_t prompt_tokens_ = 0;
  int64_t completion_tokens_ = 0;
  std::string error_;
  std::atomic<bool> cancelled_{false};
};

class Engine {
 public:
  // `context`: tokens per slot (prompt + completion); `max_queue`: waiting requests beyond the
  // busy slots before submit() refuses.
  Engine(const LlamaModel& model, const Tokenizer& tokenizer, int slots, int64_t context,
         size_t max_queue);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; nullptr when the queue is full or the engine is stopping. Throws Error
  // for a prompt that is empty or does not leave room for one token in the context.
  std::shared_ptr<Job> submit(CompletionRequest request);
  // Ends every request (finish reason Cancelled) and joins the inference thread.
  void stop();

  int64_t context() const { return context_; }
  struct Load {
    int slots, busy;
    size_t queued;
  };
  Load load();

 private:
  struct Slot;
  void run();
  void step(Slot& slot);
  std::string completion_text(const Slot& slot) const;  // all decoded completion text
  // Publishes `rest` (the final text not yet sent) and the end, and frees the slot.
  void finish(Slot& slot, FinishReason reason, const std::string& rest,
              const std::string& error = {});

  const LlamaModel& model_;
  const Tokenizer& tokenizer_;
  const int64_t context_;
  const size_t max_queue_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<std::shared_ptr<Job>, CompletionRequest>> queue_;
  int busy_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace subbit::server
