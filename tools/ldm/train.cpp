// ldm train CONFIG [-o DIR] [--resume DIR] [--max-steps N] [--nproc N] [key=value ...]
// Data parallel: started by torchrun-style launchers (RANK, WORLD_SIZE, ...)
// or by --nproc N, which runs N local ranks of this same command line.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

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
