// ldm convert IN OUT [--dtype fp32|fp16|bf16] [--ema]: any weights file to safetensors.
// ldm init --config CFG OUT: a random-weight checkpoint of a config's shapes
// (benchmarks and load tests at SD size without downloading weights).
#include <torch/torch.h>

#include <iostream>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/sd_configs.h"
#include "ldm/util/config.h"
#include "ldm/models/lora.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

namespace {
// LitEma names a parameter "model.a.b" as "model_ema.ab" (prefix dropped, dots removed).
std::string ema_name(const std::string& key) {
  std::string k = key.substr(std::string("model.").size());
  std::string out = "model_ema.";
  for (char c : k)
    if (c != '.') out += c;
  return out;
}

torch::ScalarType dtype_of(const std::string& d) {
  return d == "fp16" ? torch::kFloat16 : d == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

// Each LoRA's deltas added to the float32 copy of the weights it touches.
void merge_loras(io::TensorMap& weights, const std::vector<std::string>& specs) {
  if (specs.empty()) return;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& [k, t] : weights) shapes[k] = t.sizes().vec();
  for (const auto& spec : specs) {
    auto [file, mult] = parse_lora_arg(spec);
    auto match = match_lora(io::load_weights(file).tensors, shapes, file);
    for (const auto& d : match.deltas) {
      auto& w = weights.at(d.key);
      auto merged = w.to(torch::kFloat32).clone();  // never write into the input's (mapped) tensors
      add_lora_delta(merged, d, mult);
      w = merged.to(w.scalar_type());
    }
    std::cout << file << ": " << match.deltas.size() << " weights changed x" << mult;
    if (!match.unmatched.empty()) std::cout << "; " << match.unmatched.size() << " modules matched nothing (" << match.unmatched[0] << " ...)";
    std::cout << "\n";
  }
}

void add_init(CLI::App& app) {
  struct Opts {
    std::string config, out, dtype = "fp32";
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("init", "write a random-weight checkpoint of a config's model (the config's own init)");
  sub->add_option("--config", o->config, "model config: a YAML file or a built-in name (v1-inference.yaml, ...)")
      ->required();
  sub->add_option("OUT", o->out, "output .safetensors")->required();
  sub->add_option("--dtype", o->dtype, "stored dtype of floating tensors: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "seed of the initialisation")->capture_default_str();
  sub->callback([o] {
    torch::manual_seed(o->seed);
    const bool file = std::filesystem::exists(o->config);
    auto cfg = file ? load_yaml(o->config) : YAML::Load(builtin_config(o->config));
    auto m = instantiate_from_config(model_node(cfg), o->config + ": model");
    io::TensorMap out;
    int64_t n = 0;
    for (auto& [k, t] : state_dict(*m)) {
      out[k] = torch::isFloatingType(t.scalar_type()) ? t.to(dtype_of(o->dtype)) : t;
      n += t.numel();
    }
    m.reset();
    io::save_safetensors(o->out, out, {{"format", "pt"}, {"ldm_init_config", o->config}});
    std::cout << "wrote " << o->out << " (" << out.size() << " tensors, " << n << " values, " << o->dtype << ")\n";
  });
}
}  // namespace

void add_convert(CLI::App& app) {
  add_init(app);
  struct Opts {
    std::string in, out, dtype;
    bool ema = false;
    std::vector<std::string> loras;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("convert", "convert .ckpt/.safetensors to .safetensors");
  sub->add_option("IN", o->in, "input weights (.ckpt, .pt, .pth, .safetensors) or an ldm train run directory")->required();
  sub->add_option("OUT", o->out, "output .safetensors")->required();
  sub->add_option("--dtype", o->dtype, "cast floating tensors: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_flag("--ema", o->ema, "write the EMA weights under the normal model keys");
  sub->add_option("--lora", o->loras, "bake a LoRA into the weights: FILE[:MULT] (repeatable)");
  sub->callback([o] {
    auto ck = io::load_weights(weights_file(o->in));  // a run directory: its newest checkpoint
    io::TensorMap out;
    int swapped = 0, ema_dropped = 0;
    for (auto& [k, t] : ck.tensors) {
      if (k.rfind("model_ema.", 0) == 0) {  // EMA copies are folded in or dropped
        ++ema_dropped;
        continue;
      }
      torch::Tensor v = t;
      if (o->ema && k.rfind("model.", 0) == 0) {
        auto it = ck.tensors.find(ema_name(k));
        if (it == ck.tensors.end()) throw Error(o->in + ": --ema: no EMA weight " + ema_name(k) + " for " + k);
        v = it->second;
        ++swapped;
      }
      if (!o->dtype.empty() && torch::isFloatingType(v.scalar_type())) {
        v = v.to(dtype_of(o->dtype));
      }
      out[k] = v;
    }
    if (o->ema && swapped == 0) throw Error(o->in + ": --ema: the file has no model.* weights with EMA copies");
    merge_loras(out, o->loras);
    std::map<std::string, std::string> md = ck.metadata;
    md["format"] = "pt";
    if (ck.global_step >= 0) md["global_step"] = std::to_string(ck.global_step);
    io::save_safetensors(o->out, out, md);
    std::cout << "wrote " << o->out << " (" << out.size() << " tensors" << (o->ema ? ", EMA weights" : "") << ")\n";
    if (ema_dropped)
      std::cout << "note: " << ema_dropped << " model_ema.* tensors "
                << (o->ema ? "written as the model's weights (--ema); the trained weights were dropped"
                           : "dropped (the EMA copy of the UNet; --ema keeps them as the model's weights)")
                << "\n";
  });
}

}  // namespace ldm::cli
