#include "ldm/models/diffusion/load.h"

#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <set>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/mapped_file.h"
#include "ldm/models/diffusion/sd_configs.h"
#include "ldm/io/run_dir.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"

namespace ldm {

YAML::Node model_node(const YAML::Node& cfg) { return cfg["model"] ? cfg["model"] : cfg; }

std::shared_ptr<LatentDiffusion> load_latent_diffusion(const std::string& config_arg, const std::string& ckpt,
                                                       const ModelLoadOptions& o) {
  // a training run directory or one of its checkpoints: the model weights in it
  const std::string file = weights_file(ckpt);
  auto w = io::load_weights(file).tensors;
  if (!o.prediction.empty() && o.prediction != "eps" && o.prediction != "v")
    throw Error("--prediction: expected eps or v, got \"" + o.prediction + "\"");
  // the config: a file, a built-in name, or detected from the checkpoint's tensors
  std::string config = config_arg;
  if (config.empty()) config = run_config_of(ckpt);  // a run directory carries its config.yaml
  YAML::Node cfg;
  if (config.empty()) {
    auto d = detect_sd_config(w, file, o.prediction);
    if (!o.quiet) std::cerr << "note: " << ckpt << ": " << d.why << "; using built-in " << d.name << "\n";
    config = "built-in " + d.name;
    cfg = YAML::Load(builtin_config(d.name));
  } else if (!std::filesystem::exists(config) && config.find('/') == std::string::npos &&
             config.size() > 5 && config.substr(config.size() - 5) == ".yaml") {
    cfg = YAML::Load(builtin_config(config));
    config = "built-in " + config;
  } else {
    cfg = load_yaml(config);
  }
  auto node = model_node(cfg);
  if (!o.prediction.empty()) node["params"]["parameterization"] = o.prediction;
  std::shared_ptr<LatentDiffusion> m;
  {
    nn::InitScope empty(nn::Init::Empty);  // every parameter is then required from the file
    m = instantiate_as<LatentDiffusion>(node, config + ": model");
  }
  if (!m) throw Error(config + ": model.target must be ldm.models.diffusion.ddpm.LatentDiffusion or DDPM");
  bool has_ema = false;
  for (auto& [k, v] : w)
    if (k.rfind("model_ema.", 0) == 0) has_ema = true;
  if (!m->model_ema) {  // the reference without use_ema ignores them too
    for (auto it = w.begin(); it != w.end();) it = it->first.rfind("model_ema.", 0) == 0 ? w.erase(it) : std::next(it);
  }
  {
    // Convert the networks' floating weights that are not in the compute
    // dtype (fp16 files for fp32, anything for --precision bf16) one by one,
    // dropping each source tensor's pages: peak memory stays near the
    // converted size. The module's tensors take the new dtype; all are then
    // aliased, not copied.
    const auto want = o.dtype.value_or(torch::kFloat32);
    std::map<std::string, torch::Tensor> targets;
    for (auto& p : m->named_parameters()) targets[p.key()] = p.value();
    for (auto& b : m->named_buffers()) targets[b.key()] = b.value();
    for (auto& [k, v] : w) {
      const bool net = k.rfind("model.diffusion_model.", 0) == 0 || k.rfind("first_stage_model.", 0) == 0 ||
                       k.rfind("cond_stage_model.", 0) == 0;
      auto it = targets.find(k);
      if (!net || !v.is_floating_point() || v.scalar_type() == want || it == targets.end()) continue;
      auto c = v.to(want);
      if (v.is_contiguous() && v.storage().use_count() == 1) io::release_pages(v.data_ptr(), v.nbytes());  // no other view reads it
      v = c;
      if (it->second.scalar_type() != want)
        it->second.set_data(torch::empty(it->second.sizes(), it->second.options().dtype(want)));
    }
  }
  auto rep = load_state_dict(*m, w, false, ckpt, /*alias=*/true);  // zero-copy from the mapping
  if (!rep.mismatched.empty()) throw Error(ckpt + ": " + rep.summary());
  std::set<std::string> params;
  for (auto& p : m->named_parameters()) params.insert(p.key());
  std::vector<std::string> missing_params;
  for (auto& k : rep.missing)
    if (params.count(k)) missing_params.push_back(k);
  if (!missing_params.empty()) {
    LoadReport r;
    r.missing = missing_params;
    throw Error(ckpt + ": does not hold every weight " + config + " describes: " + r.summary());
  }
  if (m->model_ema && !has_ema) {
    m->model_ema->reset(m->model_wrapper());
    if (!o.quiet) std::cerr << "note: " << ckpt << " has no model_ema.*; EMA starts from the model weights\n";
  }
  if (!o.quiet && !rep.unexpected.empty())
    std::cerr << "note: " << ckpt << ": ignored " << rep.unexpected.size() << " keys the config does not use (e.g. "
              << rep.unexpected.front() << ")\n";
  m->eval();
  return m;
}

}  // namespace ldm
