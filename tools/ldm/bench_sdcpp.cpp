#include "tools/ldm/bench_sdcpp.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "tools/ldm/bench_spawn.h"

namespace ldm::cli {
using json = nlohmann::json;

namespace {
// The number right after the last `marker` in `log`, if any.
std::optional<double> after(const std::string& log, const std::string& marker) {
  const auto p = log.rfind(marker);
  if (p == std::string::npos) return std::nullopt;
  const char* start = log.c_str() + p + marker.size();
  char* end = nullptr;
  const double v = std::strtod(start, &end);
  return end == start ? std::nullopt : std::optional<double>(v);
}

// The number ending right before position `end` (digits and dots).
double number_before(const std::string& log, size_t end) {
  size_t b = end;
  while (b > 0 && (std::isdigit(static_cast<unsigned char>(log[b - 1])) || log[b - 1] == '.')) --b;
  return b == end ? -1 : std::strtod(log.substr(b, end - b).c_str(), nullptr);
}
}  // namespace

json parse_sdcpp_log(const std::string& log) {
  json r = json::object();
  // progress lines end "N/N - 12.34s/it" (or "1.50it/s"), each the time of that step alone: the last one
  const auto slow = log.rfind("s/it"), fast = log.rfind("it/s");
  const bool has_slow = slow != std::string::npos, has_fast = fast != std::string::npos;
  if (has_slow && (!has_fast || slow > fast)) {
    if (double v = number_before(log, slow); v > 0) r["step_s"] = v;
  } else if (has_fast) {
    if (double v = number_before(log, fast); v > 0) r["step_s"] = 1 / v;
  }
  if (auto v = after(log, "sampling completed, taking ")) r["sampling_s"] = *v;
  if (auto v = after(log, "decode_first_stage completed, taking ")) r["decode_s"] = *v;
  return r;
}

SdcppPeer::SdcppPeer(std::string bin, std::string weights, int threads)
    : bin_(std::move(bin)), weights_(std::move(weights)), threads_(threads) {}

json SdcppPeer::run(int side, int steps) {
  auto found = runs_.find(side);
  if (found != runs_.end()) return found->second;
  const std::string n = std::to_string(side);
  // ours: euler_a, CFG 7, the same prompt (ldm bench's txt2img works)
  auto s = spawn({bin_, "-m", weights_, "-p", "a lighthouse at dusk, oil painting", "-W", n, "-H", n, "--steps",
                  std::to_string(steps), "--cfg-scale", "7", "--sampling-method", "euler_a", "-t",
                  std::to_string(threads_), "-o",
                  (std::filesystem::temp_directory_path() / "ldm_bench_sdcpp.png").string()});
  json r = ok(s) ? parse_sdcpp_log(s.out) : json{{"error", output_tail(s)}};
  r["wall_s"] = s.wall_s;
  r["peak_gb"] = s.peak_gb;
  r["steps"] = steps;
  return runs_[side] = r;
}

void SdcppPeer::add(const std::string& work, json& r, std::string& peers) {
  const char* key = nullptr;
  if (work == "unet256" || work == "unet512") key = "step_s";
  else if (work == "vae256" || work == "vae512") key = "decode_s";
  else if (work == "txt2img256") key = "wall_s";
  else return;
  const int side = work.find("512") != std::string::npos ? 512 : 256;
  // 256: the 5 steps of our txt2img work; 512: 3 (its figures are per step or per decode)
  json s = run(side, side == 256 ? 5 : 3);
  if (s.contains("error") || !s.contains(key)) {
    r["sdcpp"] = s;
    peers += "sd.cpp failed ";
    return;
  }
  const double t = s[key].get<double>();
  r["sdcpp"] = {{"median_s", t}, {"from", key}, {"run", s}};
  if (work == "txt2img256") r["sdcpp"]["peak_gb"] = s["peak_gb"];
  char b[96];
  std::snprintf(b, sizeof b, "sd.cpp %.2f (x%.2f) ", t, r["median_s"].get<double>() / t);
  peers += b;
}

}  // namespace ldm::cli
