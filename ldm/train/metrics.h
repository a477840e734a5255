// Training metrics to a CSV file and to TensorBoard event files
// (events.out.tfevents.*: TFRecord-framed Event protos with scalar
// summaries, written without TensorFlow).
#pragma once
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace ldm {

class MetricsLogger {
 public:
  // Appends to <dir>/metrics.csv (header written once) and writes a new
  // event file in <dir>/tensorboard/. `resumed_at` >= 0: a resumed run; rows
  // after that step (logged after its checkpoint) are dropped from the CSV and
  // TensorBoard is told to drop them (a SessionLog START event).
  explicit MetricsLogger(const std::string& dir, int64_t resumed_at = -1);
  ~MetricsLogger();
  void log(int64_t step, const std::map<std::string, double>& values);

 private:
  void rewrite_header();
  std::string dir_;
  FILE* csv_ = nullptr;
  FILE* tb_ = nullptr;
  std::vector<std::string> columns_;
};

// TFRecord framing and the Event proto, exposed for tests.
uint32_t crc32c(const void* data, size_t n);
std::string tf_event_scalar(double wall_time, int64_t step, const std::string& tag, float value);
std::string tf_record(const std::string& payload);
std::string tf_event_session_start(double wall_time, int64_t step);

}  // namespace ldm
