// `ldm train` run directories as inputs: wherever a checkpoint file is
// accepted, a run directory (or one of its checkpoint directories) is too.
#pragma once
#include <string>

namespace ldm {

// The newest complete checkpoint of a run dir (or a checkpoint dir itself).
std::string latest_checkpoint(const std::string& run_dir_or_ckpt);
// A weights file for `path`: itself, or the newest checkpoint's model.safetensors.
std::string weights_file(const std::string& path);
// The run directory `path` belongs to: itself, or DIR for DIR/checkpoints/step-N.
std::string run_dir_of(const std::string& path);
// The config.yaml a run (or checkpoint) directory carries; empty when `path` is a file or has none.
std::string run_config_of(const std::string& path);
// Whether `dir` already holds a run (checkpoints or metrics).
bool is_run_dir(const std::string& dir);

}  // namespace ldm
