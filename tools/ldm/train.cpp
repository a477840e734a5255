// ldm train CONFIG [-o DIR] [--resume DIR] [--max-steps N] [key=value ...]
#include <iostream>

#include "ldm/error.h"
#include "ldm/train/trainer.h"
#include "ldm/util/config.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

void add_train(CLI::App& app) {
  struct Opts {
    std::string config;
    std::vector<std::string> overrides;
    TrainOptions t;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("train", "train an AutoencoderKL or a LatentDiffusion/DDPM from a reference config");
  sub->add_option("config", o->config, "config YAML (model, data, lightning.trainer, training)")->required();
  sub->add_option("overrides", o->overrides, "key.path=value overrides, e.g. lightning.trainer.max_steps=100");
  sub->add_option("-o,--output", o->t.out_dir, "run directory: checkpoints/, metrics.csv, tensorboard/, images/")
      ->capture_default_str();
  sub->add_option("--resume", o->t.resume, "continue a run (its directory or one checkpoint directory)");
  sub->add_option("--max-steps", o->t.max_steps, "stop after this many optimizer steps (overrides the config)");
  sub->add_flag("-q,--quiet", o->t.quiet, "no progress line");
  sub->callback([o] {
    auto cfg = load_yaml(o->config);
    apply_overrides(cfg, o->overrides);
    auto r = train(cfg, o->t);
    std::cerr << "trained " << r.steps << " steps in " << r.seconds << " s, peak memory " << r.peak_rss_gb
              << " GB; checkpoint " << r.last_checkpoint << "\n";
  });
}

}  // namespace ldm::cli
