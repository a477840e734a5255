// ldm bench's stable-diffusion.cpp peer: its figures read from the log that
// sd.cpp's CLI prints, here from a stand-in script that prints that log.
#include "tools/ldm/bench_sdcpp.h"
#include "tools/ldm/bench_spawn.h"

#include <sys/stat.h>

#include <fstream>

#include "tests/testing.h"

using ldm::cli::parse_sdcpp_log;
using ldm::cli::SdcppPeer;
using json = nlohmann::json;

namespace {
// sd.cpp's progress bar redraws one line with \r and ANSI erase codes.
const char* kLog =
    "[INFO ] stable-diffusion.cpp:5296 - get_learned_condition completed, taking 0.51s\n"
    "\r  |=====>    | 1/3 - 0.00it/s\033[K\r  |======>   | 2/3 - 4.10s/it\033[K"
    "\r  |==========| 3/3 - 3.90s/it\033[K\n"
    "[INFO ] stable-diffusion.cpp:5711 - sampling completed, taking 12.25s\n"
    "[INFO ] stable-diffusion.cpp:5391 - decode_first_stage completed, taking 6.75s\n";

std::string fake_sdcpp(const std::string& dir, const std::string& body) {
  const std::string path = dir + "/sd";
  std::ofstream(path) << "#!/bin/sh\n" << body;
  chmod(path.c_str(), 0755);
  return path;
}
}  // namespace

TEST(BenchSdcpp, ParsesTheLastStepSamplingAndDecode) {
  auto r = parse_sdcpp_log(kLog);
  EXPECT_DOUBLE_EQ(r["step_s"].get<double>(), 3.90);  // the last step, not the first's 0.00it/s
  EXPECT_DOUBLE_EQ(r["sampling_s"].get<double>(), 12.25);
  EXPECT_DOUBLE_EQ(r["decode_s"].get<double>(), 6.75);
  EXPECT_DOUBLE_EQ(parse_sdcpp_log("3/3 - 2.00it/s\n")["step_s"].get<double>(), 0.5);
  EXPECT_TRUE(parse_sdcpp_log("no figures here").empty());
}

TEST(BenchSdcpp, OneRunPerSizeServesItsWorks) {
  const auto dir = ldm::test::temp_dir();
  // counts its runs and echoes the size it was asked for into the step time
  const auto bin = fake_sdcpp(dir, "echo run >> " + dir + "/runs\n"
                                   "while [ $# -gt 0 ]; do [ \"$1\" = -W ] && W=$2; shift; done\n"
                                   "printf '3/3 - %s.00s/it\\ndecode_first_stage completed, taking 2.00s\\n' $((W / 256))\n");
  SdcppPeer peer(bin, "weights.safetensors", 2);
  json unet256 = {{"median_s", 0.5}}, vae256 = {{"median_s", 1.0}}, unet512 = {{"median_s", 1.0}}, clip = {{"median_s", 1.0}};
  std::string peers;
  peer.add("unet256", unet256, peers);
  peer.add("vae256", vae256, peers);
  peer.add("unet512", unet512, peers);
  peer.add("clip", clip, peers);  // no such work in sd.cpp's log
  EXPECT_DOUBLE_EQ(unet256["sdcpp"]["median_s"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(vae256["sdcpp"]["median_s"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(unet512["sdcpp"]["median_s"].get<double>(), 2.0);
  EXPECT_FALSE(clip.contains("sdcpp"));
  EXPECT_EQ(peers, "sd.cpp 1.00 (x0.50) sd.cpp 2.00 (x0.50) sd.cpp 2.00 (x0.50) ");
  std::ifstream runs(dir + "/runs");
  int n = 0;
  for (std::string l; std::getline(runs, l);) ++n;
  EXPECT_EQ(n, 2);  // 256 once for both of its works, 512 once
}

TEST(BenchSdcpp, AFailingPeerIsReportedNotFatal) {
  const auto dir = ldm::test::temp_dir();
  SdcppPeer peer(fake_sdcpp(dir, "echo 'error: cannot load model' >&2; exit 1\n"), "w", 2);
  json r = {{"median_s", 1.0}};
  std::string peers;
  peer.add("vae512", r, peers);
  EXPECT_EQ(peers, "sd.cpp failed ");
  EXPECT_NE(r["sdcpp"]["error"].get<std::string>().find("cannot load model"), std::string::npos);
}

TEST(BenchSdcpp, PeerBinaryFromAPathOrPATH) {
  EXPECT_TRUE(ldm::cli::can_execute("sh"));  // found on PATH, as posix_spawnp would start it
  EXPECT_TRUE(ldm::cli::can_execute("/bin/sh"));
  EXPECT_FALSE(ldm::cli::can_execute("no-such-sd-cli-here"));
  EXPECT_FALSE(ldm::cli::can_execute(ldm::test::temp_dir() + "/sd-cli"));
  EXPECT_FALSE(ldm::cli::can_execute(""));
}
