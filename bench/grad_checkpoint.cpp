// Peak memory and time of one UNet training step (forward + backward) with
// gradient checkpointing off and on. Each mode runs in its own child process
// so each peak (ru_maxrss from wait4) is that mode's alone.
//
//   ldm_bench_grad_checkpoint [--config sd-v1-inference.yaml] [--key model.params.unet_config]
//                             [--latent 32] [--batch 1]
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "ldm/error.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/util/runtime.h"

extern char** environ;

namespace {
struct Args {
  std::string config = "../shared/data/configs/sd-v1-inference.yaml";
  std::string key = "model.params.unet_config";
  int latent = 32, batch = 1;
  std::string child;  // "on" / "off" in a child process
};

double max_rss_gb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1048576.0;
}

YAML::Node find_key(YAML::Node n, const std::string& dotted, const std::string& file) {
  std::stringstream ss(dotted);
  std::string part;
  while (std::getline(ss, part, '.')) {
    if (!n.IsMap() || !n[part]) throw ldm::Error(file + ": no key " + dotted);
    n = n[part];
  }
  return n;
}

// One step in this process; prints "seconds after_load_gb peak_gb".
int run_child(const Args& a) {
  ldm::init_runtime();
  auto node = YAML::Clone(find_key(ldm::load_yaml(a.config), a.key, a.config));
  node["params"]["use_checkpoint"] = a.child == "on";
  auto unet = ldm::instantiate_as<ldm::UNetModel>(node, a.key);
  unet->train();
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(0);
  auto p = ldm::Params(node["params"], a.key);
  int64_t in_ch = p.get<int64_t>("in_channels", 4);
  int64_t ctx_dim = p.get<int64_t>("context_dim", 0);
  auto x = torch::randn({a.batch, in_ch, a.latent, a.latent}, gen);
  auto t = torch::full({a.batch}, 500, torch::kLong);
  torch::Tensor ctx;
  if (ctx_dim > 0) ctx = torch::randn({a.batch, 77, ctx_dim}, gen);
  double after_load = max_rss_gb();
  auto t0 = std::chrono::steady_clock::now();
  auto out = unet->forward(x, t, ctx);
  out.square().mean().backward();
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%.3f %.3f %.3f\n", sec, after_load, max_rss_gb());
  return 0;
}

struct Result {
  double sec = 0, after_load = 0, peak = 0;
};

Result spawn_mode(const std::string& self, const Args& a, const char* mode) {
  std::vector<std::string> argv_s = {self, "--config", a.config, "--key", a.key, "--latent",
                                     std::to_string(a.latent), "--batch", std::to_string(a.batch),
                                     "--child", mode};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) throw ldm::Error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  if (posix_spawn(&pid, self.c_str(), &fa, nullptr, argv.data(), environ) != 0)
    throw ldm::Error("cannot start " + self);
  close(fds[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, n);
  close(fds[0]);
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw ldm::Error(std::string("child (use_checkpoint ") + mode + ") failed");
  Result r;
  if (std::sscanf(out.c_str(), "%lf %lf %lf", &r.sec, &r.after_load, &r.peak) != 3)
    throw ldm::Error("child printed: " + out);
  r.peak = ru.ru_maxrss / 1048576.0;  // the kernel's figure, same as the child's own
  return r;
}
}  // namespace

int main(int argc, char** argv) {
  ldm::reexec_with_runtime_env(argv);
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw ldm::Error("option " + k + " needs a value");
      return argv[++i];
    };
    try {
      if (k == "--config") a.config = next();
      else if (k == "--key") a.key = next();
      else if (k == "--latent") a.latent = std::stoi(next());
      else if (k == "--batch") a.batch = std::stoi(next());
      else if (k == "--child") a.child = next();
      else throw ldm::Error("unknown option " + k + " (--config --key --latent --batch)");
    } catch (const std::exception& e) {
      std::cerr << "error: " << e.what() << "\n";
      return 2;
    }
  }
  try {
    if (!a.child.empty()) return run_child(a);
    std::printf("UNet %s (%s), latent %dx%d, batch %d, forward+backward, %d threads\n", a.config.c_str(),
                a.key.c_str(), a.latent, a.latent, a.batch, (int)std::thread::hardware_concurrency());
    std::printf("%-16s %10s %14s %12s %16s\n", "use_checkpoint", "step s", "after load GB", "peak GB",
                "step extra GB");
    Result r[2];
    const char* modes[2] = {"off", "on"};
    for (int m = 0; m < 2; ++m) {
      r[m] = spawn_mode("/proc/self/exe", a, modes[m]);
      std::printf("%-16s %10.2f %14.2f %12.2f %16.2f\n", modes[m], r[m].sec, r[m].after_load, r[m].peak,
                  r[m].peak - r[m].after_load);
      std::fflush(stdout);
    }
    std::printf("checkpointing: peak x%.2f, step extra (grads + activations) x%.2f, time x%.2f\n", r[1].peak / r[0].peak,
                (r[1].peak - r[1].after_load) / (r[0].peak - r[0].after_load), r[1].sec / r[0].sec);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
