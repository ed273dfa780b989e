#pragma once
// Progress on stderr with rate and ETA: a bar redrawn in place on a terminal; elsewhere (a log
// file, a pipe) one plain line at most every `log_interval` seconds, so long runs show life in
// logs without flooding them.
#include <chrono>
#include <cstdint>
#include <string>

namespace subbit {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total_steps, std::string rate_unit,
              double log_interval = 30.0);
  // steps_done of total; rate_count is what the rate is measured in (tokens, ...).
  void update(int64_t steps_done, int64_t rate_count, const std::string& extra = "");
  void finish();  // clears the line
  ~ProgressBar();

 private:
  std::string label_;
  int64_t total_;
  std::string unit_;
  bool terminal_;
  bool drawn_ = false;
  double log_interval_;
  double last_logged_ = 0;  // seconds after start_
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);  // 1:02:03 / 2:03

}  // namespace subbit
