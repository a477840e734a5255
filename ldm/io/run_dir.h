// `ldm train` run directories as inputs: wherever a checkpoint file is
// accepted, a run directory (or one of its checkpoint directories) is too.
#pragma once
#include <string>

namespace ldm {

// The newest complete checkpoint of a run dir (or a checkpoint dir itself).
std::string latest_checkpoint(const std::string& run_dir_or_ckpt);
// A weights file for `path`: itself, or the newest checkpoint's model.safetensors.
std::string weights_file(const std::string& path);

}  // namespace ldm
