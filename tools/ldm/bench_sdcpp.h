// stable-diffusion.cpp (leejet/stable-diffusion.cpp) as a peer of ldm bench:
// its CLI runs txt2img once per image size and the works' figures are read
// from its log, so they are the same work as ours on the same weights file.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace ldm::cli {

class SdcppPeer {
 public:
  SdcppPeer(std::string bin, std::string weights, int threads);
  // For unet256/512 (its last sampling step: one UNet call on the
  // cond + uncond batch), vae256/512 (its decode, the command's only call)
  // and txt2img256 (the whole command, 5 steps): sets r["sdcpp"] and
  // appends "sd.cpp S (xR)" to `peers`. Other works are left alone.
  void add(const std::string& work, nlohmann::json& r, std::string& peers);

 private:
  nlohmann::json run(int side, int steps);
  std::string bin_, weights_;
  int threads_;
  std::map<int, nlohmann::json> runs_;  // by image side
};

// Figures from stable-diffusion.cpp's log: step_s (its last progress line),
// sampling_s and decode_s; absent when the log lacks the line.
nlohmann::json parse_sdcpp_log(const std::string& log);

}  // namespace ldm::cli
