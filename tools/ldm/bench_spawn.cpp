#include "tools/ldm/bench_spawn.h"

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "ldm/error.h"

extern char** environ;

namespace ldm::cli {

Spawned spawn(const std::vector<std::string>& args, const std::vector<std::string>& env_extra) {
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.push_back(*e);
  for (auto& e : env_extra) env.push_back(e);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) throw Error("bench: pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = posix_spawnp(&pid, args[0].c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    close(fds[0]);
    close(fds[1]);
    throw Error("bench: cannot start " + args[0]);
  }
  close(fds[1]);
  Spawned s;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) s.out.append(buf, n);
  close(fds[0]);
  rusage ru{};
  wait4(pid, &s.status, 0, &ru);
  s.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.peak_gb = ru.ru_maxrss / 1048576.0;
  return s;
}

bool ok(const Spawned& s) { return WIFEXITED(s.status) && WEXITSTATUS(s.status) == 0; }

std::string output_tail(const Spawned& s, size_t n) { return s.out.size() > n ? s.out.substr(s.out.size() - n) : s.out; }

bool can_execute(const std::string& bin) {
  if (bin.empty()) return false;
  if (bin.find('/') != std::string::npos) return access(bin.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t a = 0; a <= dirs.size();) {
    size_t b = dirs.find(':', a);
    if (b == std::string::npos) b = dirs.size();
    const std::string dir = b > a ? dirs.substr(a, b - a) : ".";
    if (access((dir + "/" + bin).c_str(), X_OK) == 0) return true;
    a = b + 1;
  }
  return false;
}

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

}  // namespace ldm::cli
