// Child processes for ldm bench: each work and each peer runs in its own
// process, so its peak memory is its own (wait4's ru_maxrss).
#pragma once
#include <string>
#include <vector>

namespace ldm::cli {

struct Spawned {
  int status = 0;
  double wall_s = 0, peak_gb = 0;
  std::string out;  // stdout and stderr together
};

// Runs argv (with extra environment entries), capturing its output.
Spawned spawn(const std::vector<std::string>& args, const std::vector<std::string>& env_extra = {});
bool ok(const Spawned& s);  // exited with status 0
std::string output_tail(const Spawned& s, size_t n = 400);  // the last n characters, for error messages
// Whether `bin` can be started: an executable path, or a name found on PATH (as posix_spawnp looks it up).
bool can_execute(const std::string& bin);
std::string self_exe();

}  // namespace ldm::cli
