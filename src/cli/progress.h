#pragma once
// A one-line progress bar on stderr with rate and ETA; silent when stderr is not a terminal so
// logs and pipes stay clean.
#include <chrono>
#include <cstdint>
#include <string>

namespace subbit {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total_steps, std::string rate_unit);
  // steps_done of total; rate_count is what the rate is measured in (tokens, ...).
  void update(int64_t steps_done, int64_t rate_count, const std::string& extra = "");
  void finish();  // clears the line
  ~ProgressBar();

 private:
  std::string label_;
  int64_t total_;
  std::string unit_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);  // 1:02:03 / 2:03

}  // namespace subbit
