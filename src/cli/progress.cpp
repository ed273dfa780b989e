#include "cli/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace subbit {

std::string format_duration(double seconds) {
  const int64_t s = int64_t(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

ProgressBar::ProgressBar(std::string label, int64_t total_steps, std::string rate_unit,
                         double log_interval)
    : label_(std::move(label)),
      total_(total_steps),
      unit_(std::move(rate_unit)),
      terminal_(::isatty(STDERR_FILENO) == 1),
      log_interval_(log_interval),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(int64_t done, int64_t rate_count, const std::string& extra) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(rate_count) / elapsed : 0;
  const double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : 0;
  if (!terminal_) {
    if (elapsed - last_logged_ < log_interval_) return;  // short runs stay silent
    last_logged_ = elapsed;
    fmt::print(stderr, "{}: {}/{} ({:.0f}%) | {:.0f} {}/s | elapsed {} | ETA {}{}{}\n", label_,
               done, total_, total_ > 0 ? 100.0 * double(done) / double(total_) : 0.0, rate, unit_,
               format_duration(elapsed), format_duration(eta), extra.empty() ? "" : " | ", extra);
    std::fflush(stderr);
    return;
  }
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? int(kWidth * done / total_) : 0;
  fmt::print(stderr, "\r\033[K{} [{}{}] {}/{} | {:.0f} {}/s | ETA {}{}{}", label_,
             std::string(filled, '#'), std::string(kWidth - filled, '.'), done, total_, rate, unit_,
             format_duration(eta), extra.empty() ? "" : " | ", extra);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_) fmt::print(stderr, "\r\033[K");
  drawn_ = false;
}

ProgressBar::~ProgressBar() { finish(); }

}  // namespace subbit
