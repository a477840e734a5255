// --nproc N: torchrun's job for one machine, shared by `train` and `sample`.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include "ldm/error.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

int free_local_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw Error("--nproc: cannot find a free local port for the rendezvous");
  close(fd);
  return ntohs(a.sin_port);
}

namespace {
std::string describe_status(int st) {
  if (WIFSIGNALED(st)) return "was killed by signal " + std::to_string(WTERMSIG(st));
  return "exited with status " + std::to_string(WEXITSTATUS(st));
}

// torchrun's job for one machine: N ranks of this command line with the
// rendezvous variables set; when one fails the others get `grace` seconds to
// stop on their own (their collectives fail), then SIGTERM, then SIGKILL.
volatile sig_atomic_t g_forward_signal = 0;
void on_launcher_signal(int sig) { g_forward_signal = sig; }
}  // namespace

int launch_local(int nproc, int port, double grace) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  // SIGTERM/SIGINT to the launcher (timeout, a scheduler, Ctrl-C) go to every rank
  struct sigaction sa {};
  sa.sa_handler = on_launcher_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  const pid_t launcher = getpid();
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    if (pid < 0) throw Error("--nproc: fork failed");
    if (pid == 0) {
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // a rank ends with its launcher, even after SIGKILL
      if (getppid() != launcher) _exit(1);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      // the cores split between ranks unless the user chose (torchrun sets 1)
      if (!getenv("OMP_NUM_THREADS")) setenv("OMP_NUM_THREADS", std::to_string(std::max(1, cores / nproc)).c_str(), 1);
      std::vector<char*> args;
      for (auto& a : argv_copy()) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv("/proc/self/exe", args.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  int rc = 0, alive = nproc;
  std::string first_failure;
  auto deadline = std::chrono::steady_clock::time_point::max();
  bool termed = false;
  int forwarded = 0;
  while (alive > 0) {
    if (g_forward_signal && !forwarded) {
      forwarded = g_forward_signal;
      for (pid_t p : pids)
        if (p > 0) kill(p, forwarded);
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);  // then SIGTERM/SIGKILL as below
    }
    int st = 0;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid > 0) {
      --alive;
      const int r = static_cast<int>(std::find(pids.begin(), pids.end(), pid) - pids.begin());
      pids[r] = -1;
      if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && first_failure.empty() && !forwarded) {
        first_failure = "rank " + std::to_string(r) + " " + describe_status(st);
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
        std::cerr << "ldm --nproc: " << first_failure << "; stopping the other ranks\n";
        deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace * 1000));
      }
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (pid_t p : pids)
        if (p > 0) kill(p, termed ? SIGKILL : SIGTERM);
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      termed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (forwarded) {
    std::cerr << "ldm --nproc: stopped by signal " << forwarded << "; the ranks were stopped\n";
    return 128 + forwarded;
  }
  if (rc) throw Error("distributed run failed: " + first_failure);
  return 0;
}


}  // namespace ldm::cli
