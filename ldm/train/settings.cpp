#include "ldm/train/settings.h"

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

Settings read_settings(const YAML::Node& cfg) {
  Settings s;
  auto lt = cfg["lightning"] && cfg["lightning"]["trainer"] ? cfg["lightning"]["trainer"] : YAML::Node();
  Params L(lt, "lightning.trainer");
  s.max_steps = L.get<int64_t>("max_steps", -1);
  s.max_epochs = L.get<int64_t>("max_epochs", -1);
  s.accumulate = L.get<int>("accumulate_grad_batches", 1);
  s.grad_clip = L.get<double>("gradient_clip_val", 0.0);
  s.log_every = L.get<int64_t>("log_every_n_steps", 50);
  if (L.has("precision")) s.precision = L.node("precision").as<std::string>();
  if (s.precision != "32" && s.precision != "bf16" && s.precision != "16")
    throw Error("lightning.trainer.precision: expected 32, 16 or bf16, got \"" + s.precision + "\"");
  Params T(cfg["training"], "training");
  s.seed = static_cast<uint64_t>(T.get<int64_t>("seed", 23));
  s.device = T.get<std::string>("device", "auto");
  s.log_every = T.get<int64_t>("log_every", s.log_every);
  s.checkpoint_every = T.get<int64_t>("checkpoint_every", 1000);
  s.image_every = T.get<int64_t>("image_every", 0);
  s.keep = T.get<int>("keep_checkpoints", 2);
  s.scale_lr = T.get<bool>("scale_lr", true);
  s.cache_latents = T.get<std::string>("cache_latents", "auto");
  s.sample_steps = T.get<int64_t>("sample_steps", 50);
  s.sample_cfg = T.get<double>("sample_cfg_scale", 3.0);
  s.sampler = T.get<std::string>("sampler", "ddim");
  s.vocab = T.get<std::string>("vocab", "");
  T.check_unused("training");
  if (s.accumulate < 1) throw Error("lightning.trainer.accumulate_grad_batches: expected >= 1");
  if (s.max_steps < 0 && s.max_epochs < 0) throw Error("lightning.trainer: give max_steps or max_epochs");
  return s;
}

}  // namespace ldm
