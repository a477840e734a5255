// ldm train CONFIG [-o DIR] [--resume DIR] [--max-steps N] [--nproc N] [key=value ...]
// Data parallel: started by torchrun-style launchers (RANK, WORLD_SIZE, ...)
// or by --nproc N, which runs N local ranks of this same command line.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "ldm/util/memory.h"
#include "ldm/error.h"
#include "ldm/io/run_dir.h"
#include "ldm/train/distributed.h"
#include "ldm/train/trainer.h"
#include "ldm/util/config.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

std::vector<std::string>& argv_copy() {
  static std::vector<std::string> v;
  return v;
}

namespace {

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

std::string describe_status(int st) {
  if (WIFSIGNALED(st)) return "was killed by signal " + std::to_string(WTERMSIG(st));
  return "exited with status " + std::to_string(WEXITSTATUS(st));
}

// torchrun's job for one machine: N ranks of this command line with the
// rendezvous variables set; when one fails the others get `grace` seconds to
// stop on their own (their collectives fail), then SIGTERM, then SIGKILL.
volatile sig_atomic_t g_forward_signal = 0;
void on_launcher_signal(int sig) { g_forward_signal = sig; }

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
        std::cerr << "ldm train --nproc: " << first_failure << "; stopping the other ranks\n";
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
    std::cerr << "ldm train --nproc: stopped by signal " << forwarded << "; the ranks were stopped\n";
    return 128 + forwarded;
  }
  if (rc) throw Error("distributed run failed: " + first_failure);
  return 0;
}

}  // namespace

void add_train(CLI::App& app) {
  struct Opts {
    std::string config;
    std::vector<std::string> overrides;
    TrainOptions t;
    int nproc = 1, port = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("train", "train an AutoencoderKL or a LatentDiffusion/DDPM from a reference config");
  sub->add_option("config", o->config, "config YAML (model, data, lightning.trainer, training)")->required();
  sub->add_option("overrides", o->overrides, "key.path=value overrides, e.g. lightning.trainer.max_steps=100");
  auto* out_given = sub->add_option("-o,--output", o->t.out_dir,
                                    "run directory: checkpoints/, metrics.csv, tensorboard/, images/ (a new one)")
                        ->capture_default_str();
  sub->add_option("--resume", o->t.resume,
                  "continue a run (its directory or one checkpoint directory), in that run's directory unless -o");
  sub->add_flag("--force", o->t.force, "-o names an existing run: delete its checkpoints and metrics and start over");
  sub->add_option("--max-steps", o->t.max_steps, "stop after this many optimizer steps (overrides the config)");
  sub->add_option("--nproc", o->nproc, "data-parallel processes on this machine (Gloo over loopback)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->add_option("--master-port", o->port, "rendezvous port for --nproc (default: a free one)");
  sub->add_option("--dist-timeout", o->t.dist_timeout_s,
                  "seconds a collective may wait for a peer before the rank stops with an error")
      ->capture_default_str();
  sub->add_option("--rendezvous-timeout", o->t.rendezvous_timeout_s,
                  "seconds the ranks wait for each other at the start before all stop naming the missing ones")
      ->capture_default_str();
  sub->add_flag("-q,--quiet", o->t.quiet, "no progress line");
  sub->callback([o, out_given] {
    auto env = dist_env_from_environment();
    if (env.world == 1 && o->nproc > 1) {
      if (int rc = launch_local(o->nproc, o->port ? o->port : free_local_port(), o->t.dist_timeout_s + 10)) std::exit(rc);
      return;
    }
    // resuming continues in the run it resumes unless -o says otherwise
    if (!o->t.resume.empty() && !out_given->count()) o->t.out_dir = run_dir_of(o->t.resume);
    o->t.rank = env.rank;
    o->t.world = env.world;
    o->t.master_addr = env.master_addr;
    o->t.master_port = env.master_port;
    auto cfg = load_yaml(o->config);
    apply_overrides(cfg, o->overrides);
    TrainResult r;
    try {
      r = train(cfg, o->t);
    } catch (const Error& e) {
      std::string m = e.what();
      for (const char* section : {"model", "data", "lightning", "training", "lora", "config:"})
        if (m.rfind(section, 0) == 0) m = o->config + ": " + m;  // a config key: name the file too
      if (env.world > 1 && m.rfind("distributed:", 0) != 0) m = "[rank " + std::to_string(env.rank) + "] " + m;
      throw Error(m);
    }
    if (env.rank == 0)
      std::cerr << "trained " << r.steps << " steps in " << r.seconds << " s, peak memory " << r.peak_rss_gb
                << " GB; checkpoint " << r.last_checkpoint << "\n";
  });
}

}  // namespace ldm::cli
