#include "ldm/util/progress.h"

#include <dlfcn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace ldm {

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, int64_t start, double elapsed)
    : label_(std::move(label)), total_(total), start_(start), done_(start), tty_(isatty(2)) {
  last_print_ = std::chrono::steady_clock::now();
  t0_ = last_print_ - std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                          std::chrono::duration<double>(elapsed > 0 ? elapsed : 0.0));
}

double Progress::elapsed() const {
  const auto end = end_ != decltype(end_){} ? end_ : std::chrono::steady_clock::now();
  return std::chrono::duration<double>(end - t0_).count();
}

double Progress::rate() const {
  const double el = elapsed();
  return el > 0 ? (done_ - start_) / el : 0.0;
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  if (done >= total_) end_ = now;
  // at most twice a second on a terminal, every 10 s in a log, always at the end
  double since = std::chrono::duration<double>(now - last_print_).count();
  if (done < total_ && since < (tty_ ? 0.5 : 10.0) && done != start_ + 1) return;
  last_print_ = now;
  double r = rate();
  double eta = r > 0 ? (total_ - done) / r : -1;
  std::fprintf(stderr, "%s%s %lld/%lld  %.2f it/s  ETA %s%s%s", tty_ ? "\r\033[K" : "", label_.c_str(),
               (long long)done, (long long)total_, r, format_duration(eta).c_str(), extra.empty() ? "" : "  ",
               extra.c_str());
  if (!tty_) std::fputc('\n', stderr);
  std::fflush(stderr);
}

void Progress::finish(const std::string& extra) {
  const double el = elapsed();
  std::fprintf(stderr, "%s%s %lld/%lld done in %s (%.2f it/s)%s%s\n", tty_ ? "\r\033[K" : "", label_.c_str(),
               (long long)done_, (long long)total_, format_duration(el).c_str(), rate(), extra.empty() ? "" : "  ",
               extra.c_str());
}

}  // namespace ldm
