// A progress line on stderr for long loops: step, rate, ETA, and whatever
// the caller adds (loss, lr). Redrawn in place on a terminal, one line per
// report otherwise (logs stay readable).
#pragma once
#include <chrono>
#include <string>

namespace ldm {

class Progress {
 public:
  // elapsed: seconds the work has already run (a progress made at its first
  // report, after a step's time), so the first rate is not steps / ~0 s
  Progress(std::string label, int64_t total, int64_t start = 0, double elapsed = 0.0);
  // Call after step `done` (1-based count of finished steps).
  void update(int64_t done, const std::string& extra = "");
  // The time is up to the last step's update where there was one (a caller
  // may finish after more work: the CLI decodes before it prints this).
  void finish(const std::string& extra = "");
  double rate() const;  // steps per second since the start

 private:
  double elapsed() const;  // seconds from the start to the last step (or to now before it)
  std::string label_;
  int64_t total_, start_, done_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point t0_, last_print_, end_{};
};

std::string format_duration(double seconds);
}  // namespace ldm
