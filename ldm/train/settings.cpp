#include "ldm/train/settings.h"

#include <set>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

namespace {
// pytorch_lightning 1.x Trainer arguments the reference's configs may carry
// that have no effect here (devices, validation, logging plumbing); anything
// else under lightning.trainer is a typo.
const char* const kLightningTrainerIgnored[] = {
    "accelerator", "amp_backend", "amp_level", "auto_lr_find", "auto_scale_batch_size", "auto_select_gpus", "benchmark",
    "check_val_every_n_epoch", "default_root_dir", "detect_anomaly", "deterministic", "devices", "distributed_backend",
    "enable_checkpointing", "enable_model_summary", "enable_progress_bar", "fast_dev_run", "find_unused_parameters",
    "flush_logs_every_n_steps", "gpus", "gradient_clip_algorithm", "ipus", "limit_predict_batches",
    "limit_test_batches", "limit_val_batches", "max_time", "min_epochs", "min_steps", "move_metrics_to_cpu",
    "num_nodes", "num_processes", "num_sanity_val_steps", "plugins", "prepare_data_per_node", "profiler",
    "progress_bar_refresh_rate", "reload_dataloaders_every_n_epochs", "replace_sampler_ddp", "resume_from_checkpoint",
    "strategy", "sync_batchnorm", "terminate_on_nan", "tpu_cores", "track_grad_norm", "val_check_interval",
    "weights_save_path", "weights_summary", "logger", "callbacks", "checkpoint_callback"};

std::string joined(const YAML::Node& m) {
  std::string out;
  for (auto it = m.begin(); it != m.end(); ++it) out += (out.empty() ? "" : ", ") + it->first.as<std::string>();
  return out;
}

// Top-level sections and lightning's own: unknown names are errors, not silence.
void check_sections(const YAML::Node& cfg) {
  if (!cfg.IsMap()) throw Error("config: expected a mapping with model, data, lightning, training");
  static const std::set<std::string> top = {"model", "data", "lightning", "training", "lora"};
  for (auto it = cfg.begin(); it != cfg.end(); ++it)
    if (!top.count(it->first.as<std::string>()))
      throw Error("config: unknown section \"" + it->first.as<std::string>() +
                  "\" (accepted: model, data, lightning, training, lora)");
  auto l = cfg["lightning"];
  if (!l || l.IsNull()) return;
  if (!l.IsMap()) throw Error("lightning: expected a mapping (trainer, callbacks, modelcheckpoint, logger)");
  static const std::set<std::string> parts = {"trainer", "callbacks", "modelcheckpoint", "logger"};
  for (auto it = l.begin(); it != l.end(); ++it)
    if (!parts.count(it->first.as<std::string>()))
      throw Error("lightning: unknown key \"" + it->first.as<std::string>() +
                  "\" (accepted: trainer, callbacks, modelcheckpoint, logger; present: " + joined(l) + ")");
}
const char* const kTrainerUsed = "max_steps, max_epochs, accumulate_grad_batches, gradient_clip_val, log_every_n_steps, precision";

void check_trainer_keys(const YAML::Node& lt) {
  if (!lt || !lt.IsMap()) return;
  std::set<std::string> known(std::begin(kLightningTrainerIgnored), std::end(kLightningTrainerIgnored));
  for (const char* k : {"max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "log_every_n_steps",
                        "precision"})
    known.insert(k);
  for (auto it = lt.begin(); it != lt.end(); ++it)
    if (!known.count(it->first.as<std::string>()))
      throw Error("lightning.trainer: unknown key \"" + it->first.as<std::string>() + "\" (used here: " + kTrainerUsed +
                  "; Lightning's other Trainer arguments are accepted and have no effect)");
}
}  // namespace

Settings read_settings(const YAML::Node& cfg) {
  Settings s;
  check_sections(cfg);
  auto lt = cfg["lightning"] && cfg["lightning"]["trainer"] ? cfg["lightning"]["trainer"] : YAML::Node();
  Params L(lt, "lightning.trainer");
  check_trainer_keys(lt);
  s.max_steps = L.get<int64_t>("max_steps", -1);
  s.max_epochs = L.get<int64_t>("max_epochs", -1);
  s.accumulate = L.get<int>("accumulate_grad_batches", 1);
  s.grad_clip = L.get<double>("gradient_clip_val", 0.0);
  s.log_every = L.get<int64_t>("log_every_n_steps", 50);
  s.precision = L.get<std::string>("precision", s.precision);
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
