#include "ldm/models/diffusion/sd_configs.h"

#include <algorithm>
#include <filesystem>

#include "ldm/error.h"

namespace ldm {
namespace {

const std::map<std::string, std::string>& table() {
  static const std::map<std::string, std::string> t = {
#include "builtin_configs.inc"
  };
  return t;
}

std::string shape_str(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

bool has_prefix(const std::map<std::string, torch::Tensor>& w, const std::string& p) {
  auto it = w.lower_bound(p);
  return it != w.end() && it->first.compare(0, p.size(), p) == 0;
}

}  // namespace

std::vector<std::string> builtin_config_names() {
  std::vector<std::string> v;
  for (auto& [k, _] : table()) v.push_back(k);
  return v;
}

const std::string& builtin_config(const std::string& name) {
  auto it = table().find(name);
  if (it == table().end()) {
    std::string all;
    for (auto& n : builtin_config_names()) all += (all.empty() ? "" : ", ") + n;
    throw Error("no built-in config \"" + name + "\" (have: " + all + ")");
  }
  return it->second;
}

DetectedConfig detect_sd_config(const std::map<std::string, torch::Tensor>& w, const std::string& file,
                                const std::string& prediction) {
  const std::string hint = "; give --config FILE";
  if (has_prefix(w, "conditioner.embedders.") || has_prefix(w, "model.diffusion_model.label_emb."))
    throw Error(file + ": an SDXL-style checkpoint (conditioner.embedders.*); not supported" + hint);
  auto get = [&](const std::string& k) -> const torch::Tensor& {
    auto it = w.find(k);
    if (it == w.end()) throw Error(file + ": not a Stable Diffusion 1.x/2.x checkpoint (no " + k + ")" + hint);
    return it->second;
  };
  const auto& conv_in = get("model.diffusion_model.input_blocks.0.0.weight");
  const auto& to_k = get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
  const int64_t mc = conv_in.size(0), in_ch = conv_in.size(1), ctx = to_k.size(1);
  const bool v1_text = has_prefix(w, "cond_stage_model.transformer.text_model.");
  const bool v2_text = has_prefix(w, "cond_stage_model.model.transformer.resblocks.");
  std::string family;
  if (ctx == 768 && v1_text) family = "v1";
  else if (ctx == 1024 && v2_text) family = "v2";
  if (family.empty() || mc != 320 || (in_ch != 4 && in_ch != 9))
    throw Error(file + ": tensors match no built-in config (UNet input conv " + shape_str(conv_in) +
                ", cross-attention width " + std::to_string(ctx) + ", text encoder keys " +
                (v1_text ? "HF CLIP" : v2_text ? "OpenCLIP" : "absent") + "; SD 1.x has [320, 4, 3, 3], 768, HF CLIP; "
                "SD 2.x [320, 4, 3, 3], 1024, OpenCLIP; inpainting 9 input channels)" + hint);
  const std::string text = family == "v1" ? "CLIP ViT-L text encoder" : "OpenCLIP ViT-H text encoder";
  DetectedConfig d;
  if (in_ch == 9) {
    d.name = family + "-inpainting-inference.yaml";
    d.why = "SD " + std::string(family == "v1" ? "1.x" : "2.x") + " inpainting (" + text + ", 9 UNet input channels)";
  } else if (family == "v1") {
    d.name = "v1-inference.yaml";
    d.why = "SD 1.x (" + text + ", cross-attention width 768)";
  } else {
    std::string pred = prediction;
    std::string reason = "--prediction " + prediction;
    if (pred.empty()) {
      std::string stem = std::filesystem::path(file).filename().string();
      std::transform(stem.begin(), stem.end(), stem.begin(), ::tolower);
      const bool base = stem.find("512") != std::string::npos || stem.find("base") != std::string::npos;
      pred = base ? "eps" : "v";
      reason = base ? "\"512\"/\"base\" in the file name" : "the 768-v model is assumed; --prediction eps for 512-base";
    }
    d.name = pred == "eps" ? "v2-inference.yaml" : "v2-inference-v.yaml";
    d.why = "SD 2.x (" + text + "), " + (pred == "eps" ? "eps" : "v") + "-prediction by " + reason;
  }
  return d;
}

}  // namespace ldm
