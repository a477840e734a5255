// ldm convert IN OUT [--dtype fp32|fp16|bf16] [--ema]: any weights file to safetensors.
#include <iostream>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
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
}  // namespace

void add_convert(CLI::App& app) {
  struct Opts {
    std::string in, out, dtype;
    bool ema = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("convert", "convert .ckpt/.safetensors to .safetensors");
  sub->add_option("IN", o->in, "input weights (.ckpt, .pt, .pth, .safetensors)")->required();
  sub->add_option("OUT", o->out, "output .safetensors")->required();
  sub->add_option("--dtype", o->dtype, "cast floating tensors: fp32, fp16 or bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_flag("--ema", o->ema, "write the EMA weights under the normal model keys");
  sub->callback([o] {
    auto ck = io::load_weights(o->in);
    io::TensorMap out;
    int swapped = 0;
    for (auto& [k, t] : ck.tensors) {
      if (k.rfind("model_ema.", 0) == 0) continue;  // EMA copies are folded in or dropped
      torch::Tensor v = t;
      if (o->ema && k.rfind("model.", 0) == 0) {
        auto it = ck.tensors.find(ema_name(k));
        if (it == ck.tensors.end()) throw Error(o->in + ": --ema: no EMA weight " + ema_name(k) + " for " + k);
        v = it->second;
        ++swapped;
      }
      if (!o->dtype.empty() && torch::isFloatingType(v.scalar_type())) {
        auto dt = o->dtype == "fp16" ? torch::kFloat16 : o->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
        v = v.to(dt);
      }
      out[k] = v;
    }
    if (o->ema && swapped == 0) throw Error(o->in + ": --ema: the file has no model.* weights with EMA copies");
    std::map<std::string, std::string> md = ck.metadata;
    md["format"] = "pt";
    if (ck.global_step >= 0) md["global_step"] = std::to_string(ck.global_step);
    io::save_safetensors(o->out, out, md);
    std::cout << "wrote " << o->out << " (" << out.size() << " tensors" << (o->ema ? ", EMA weights" : "") << ")\n";
  });
}

}  // namespace ldm::cli
