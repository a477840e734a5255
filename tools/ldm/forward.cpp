// ldm forward: run one module built from a one-module config on named inputs
// and write named outputs; the way to check a port against PyTorch.
#include <iostream>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/models/autoencoder.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/taesd.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

namespace {
struct Opts {
  std::string config, weights, weights_prefix, inputs, inputs_prefix, out;
};

const torch::Tensor& need(const io::TensorMap& in, const std::string& name, const Opts& o) {
  auto it = in.find(name);
  if (it == in.end())
    throw Error(o.inputs + ": missing input \"" + o.inputs_prefix + name + "\"");
  return it->second;
}
torch::Tensor opt(const io::TensorMap& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? torch::Tensor() : it->second;
}

io::TensorMap run(torch::nn::Module& m, const io::TensorMap& in, const Opts& o) {
  io::TensorMap out;
  if (auto* u = dynamic_cast<UNetModel*>(&m)) {
    out["eps"] = u->forward(need(in, "x", o), need(in, "timesteps", o), opt(in, "context"), opt(in, "y"));
  } else if (auto* e = dynamic_cast<Encoder*>(&m)) {
    out["out"] = e->forward(need(in, "x", o));
  } else if (auto* d = dynamic_cast<Decoder*>(&m)) {
    out["out"] = d->forward(need(in, "x", o));
  } else if (auto* t = dynamic_cast<TaesdNet*>(&m)) {
    out["out"] = t->forward(need(in, "x", o));
  } else if (auto* a = dynamic_cast<AutoencoderKL*>(&m)) {
    const auto& img = need(in, "image", o);
    auto enc = a->encoder->forward(img);
    auto moments = a->quant_conv->forward(enc);
    DiagonalGaussianDistribution post(moments);
    out["encoder_out"] = enc;
    out["moments"] = moments;
    out["mean"] = post.mean;
    out["logvar"] = post.logvar;
    out["std"] = post.std;
    out["kl"] = post.kl();
    out["decoded"] = a->decode(post.mode());
  } else if (auto* c = dynamic_cast<FrozenCLIPEmbedder*>(&m)) {
    auto r = c->run(need(in, "ids", o));
    out["last_hidden_state"] = r.last_hidden_state;
    out["pooled"] = r.pooled;
  } else {
    throw Error(o.config + ": ldm forward supports UNetModel, Encoder, Decoder, AutoencoderKL, taesd.Encoder/Decoder and FrozenCLIPEmbedder");
  }
  return out;
}
}  // namespace

void add_forward(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("forward", "run one module from a one-module config on named inputs");
  sub->add_option("--config", o->config, "YAML {target, params} of the module")->required();
  sub->add_option("--weights,-m,--model", o->weights, "weights (.safetensors or .ckpt)")->required();
  sub->add_option("--weights-prefix", o->weights_prefix, "key prefix of the module's weights (e.g. model.diffusion_model.)");
  sub->add_option("--inputs", o->inputs, "safetensors file with the inputs")->required();
  sub->add_option("--inputs-prefix", o->inputs_prefix, "prefix of input names (e.g. input.)");
  sub->add_option("--out", o->out, "output .safetensors")->required();
  sub->callback([o] {
    auto cfg = load_yaml(o->config);
    ModulePtr m;
    {
      nn::InitScope empty(nn::Init::Empty);
      m = instantiate_from_config(cfg, o->config);
    }
    if (auto t = std::dynamic_pointer_cast<TaesdNet>(m)) {  // either layout; the target picks the part
      m = load_taesd(o->weights, t->is_decoder());
    } else {
      io::LoadOptions lo;
      lo.prefix = o->weights_prefix;
      lo.strip_prefix = true;
      auto w = io::load_weights(o->weights, lo).tensors;
      load_state_dict(*m, w, true, o->weights);
    }
    m->eval();
    io::LoadOptions li;
    li.prefix = o->inputs_prefix;
    li.strip_prefix = true;
    auto in = io::load_weights(o->inputs, li).tensors;
    torch::NoGradGuard ng;
    auto out = run(*m, in, *o);
    io::save_safetensors(o->out, out);
    std::cout << "wrote " << o->out << ":";
    for (auto& [k, v] : out) std::cout << " " << k << v.sizes();
    std::cout << "\n";
  });
}

}  // namespace ldm::cli
