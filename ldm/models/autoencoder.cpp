#include "ldm/models/autoencoder.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/io/state_dict.h"
#include "ldm/util/config.h"
#include "ldm/util/number.h"

namespace ldm {

AutoencoderKL::AutoencoderKL(const DDConfig& d, int64_t e) : dd(d), embed_dim(e) {
  if (!dd.double_z) throw Error("AutoencoderKL: ddconfig.double_z must be true");
  encoder = register_module("encoder", std::make_shared<Encoder>(dd));
  decoder = register_module("decoder", std::make_shared<Decoder>(dd));
  quant_conv = register_module("quant_conv", std::make_shared<nn::Conv>(2, 2 * dd.z_channels, 2 * e, 1));
  post_quant_conv = register_module("post_quant_conv", std::make_shared<nn::Conv>(2, e, dd.z_channels, 1));
}

std::shared_ptr<AutoencoderKL> AutoencoderKL::from_params(const Params& p) {
  auto dd = DDConfig::from_params(p.sub("ddconfig"));
  int64_t e = p.req<int64_t>("embed_dim");
  // Training-only or bookkeeping keys of the reference; the loss is built by the trainer.
  p.ignore({"lossconfig", "image_key", "colorize_nlabels", "monitor", "learn_logvar"});
  double ema = 0;
  if (p.has("ema_decay") && !p.node("ema_decay").IsNull()) {
    ema = p.get<double>("ema_decay", 0);
    if (!(ema > 0 && ema < 1))
      throw Error(p.where() + ".ema_decay: expected a decay in (0, 1), e.g. 0.9999, or null (none); got " +
                  format_number(ema));
  }
  // The trainer's learning-rate schedule, as LatentDiffusion's (ours only: the
  // reference's AutoencoderKL trains at a constant rate).
  p.ignore({"scheduler_config"});
  auto ckpt = p.get<std::string>("ckpt_path", "");
  auto ignore = p.get<std::vector<std::string>>("ignore_keys", {});
  p.check_unused("ldm.models.autoencoder.AutoencoderKL");
  auto m = std::make_shared<AutoencoderKL>(dd, e);
  m->ema_decay = ema;
  m->make_ema();  // before the checkpoint, whose model_ema.* it then holds (as the reference)
  // Built to be filled from a whole checkpoint (Empty) or counted (Meta): no sub-model file needed.
  if (!ckpt.empty() && nn::init_mode() == nn::Init::Random) init_from_ckpt(*m, ckpt, ignore, p.where());
  return m;
}

DiagonalGaussianDistribution AutoencoderKL::encode(const torch::Tensor& x) {
  return DiagonalGaussianDistribution(quant_conv->forward(encoder->forward(x)));
}

torch::Tensor AutoencoderKL::decode(const torch::Tensor& z) { return decoder->forward(post_quant_conv->forward(z)); }

torch::Tensor AutoencoderKL::encode_to_latent(const torch::Tensor& x, bool sample, std::optional<torch::Generator> gen) {
  auto post = encode(x);
  return sample ? post.sample(gen) : post.mode();
}

std::pair<torch::Tensor, DiagonalGaussianDistribution> AutoencoderKL::forward(const torch::Tensor& x, bool sp) {
  auto post = encode(x);
  auto z = sp ? post.sample() : post.mode();
  return {decode(z), post};
}

VQModel::VQModel(const DDConfig& d, int64_t n_embed, int64_t e, bool sane) : dd(d) {
  encoder = register_module("encoder", std::make_shared<Encoder>(dd));
  decoder = register_module("decoder", std::make_shared<Decoder>(dd));
  quantize = register_module("quantize", std::make_shared<VectorQuantizer2>(n_embed, e, 0.25, true, sane));
  quant_conv = register_module("quant_conv", std::make_shared<nn::Conv>(2, dd.z_channels, e, 1));
  post_quant_conv = register_module("post_quant_conv", std::make_shared<nn::Conv>(2, e, dd.z_channels, 1));
}

std::shared_ptr<VQModel> VQModel::from_params(const Params& p, const std::string& target) {
  auto dd = DDConfig::from_params(p.sub("ddconfig"));
  if (dd.double_z) throw Error(p.where() + ".ddconfig.double_z: a VQModel needs false");
  const int64_t e = p.req<int64_t>("embed_dim"), n = p.req<int64_t>("n_embed");
  p.ignore({"lossconfig", "image_key", "colorize_nlabels", "monitor", "batch_resize_range", "scheduler_config",
            "lr_g_factor"});
  const bool use_ema = p.get<bool>("use_ema", false);
  if (p.has("remap") && !p.node("remap").IsNull()) throw Error(p.where() + ".remap: only null (no index remapping) is supported");
  const bool sane = p.get<bool>("sane_index_shape", false);
  auto ckpt = p.get<std::string>("ckpt_path", "");
  auto ignore = p.get<std::vector<std::string>>("ignore_keys", {});
  p.check_unused(target);
  auto m = std::make_shared<VQModel>(dd, n, e, sane);
  m->ema_decay = use_ema ? 0.9999 : 0;  // LitEma's default, as the reference's VQModel
  m->make_ema();
  if (!ckpt.empty() && nn::init_mode() == nn::Init::Random) init_from_ckpt(*m, ckpt, ignore, p.where());
  return m;
}

torch::Tensor VQModel::encode_prequant(const torch::Tensor& x) { return quant_conv->forward(encoder->forward(x)); }
torch::Tensor VQModel::decode_quant(const torch::Tensor& q) { return decoder->forward(post_quant_conv->forward(q)); }

std::pair<torch::Tensor, VectorQuantizer2::Out> VQModel::forward(const torch::Tensor& x) {
  auto q = quantize->forward(encode_prequant(x));
  return {decode_quant(q.z_q), q};
}

void FirstStage::make_ema() {
  if (ema_decay <= 0) return;
  auto e = std::make_shared<LitEma>(*this, ema_decay);
  model_ema = model_ema ? replace_module("model_ema", e) : register_module("model_ema", e);
}

AutoencoderOutput FirstStage::train_forward(const torch::Tensor&, torch::Generator&) {
  throw Error("this first stage has no training objective (train an AutoencoderKL or VQModel)");
}
std::vector<torch::Tensor> FirstStage::autoencoder_parameters() { return parameters(); }
torch::Tensor FirstStage::last_layer() { throw Error("this first stage has no decoder to weight a GAN term on"); }
torch::Tensor FirstStage::reconstruct(const torch::Tensor& x) { return decode(encode_to_latent(x, false)); }

namespace {
std::vector<torch::Tensor> params_of(std::initializer_list<torch::nn::Module*> mods) {
  std::vector<torch::Tensor> v;
  for (auto* m : mods)
    for (auto& p : m->parameters()) v.push_back(p);
  return v;
}
}  // namespace

AutoencoderOutput AutoencoderKL::train_forward(const torch::Tensor& x, torch::Generator& g) {
  AutoencoderOutput a;
  a.inputs = x;
  a.posterior.emplace(encode(x));
  a.recon = decode(a.posterior->sample(g));
  return a;
}
// the reference's opt_ae: encoder, decoder, quant_conv, post_quant_conv (not loss.logvar)
std::vector<torch::Tensor> AutoencoderKL::autoencoder_parameters() {
  return params_of({encoder.get(), decoder.get(), quant_conv.get(), post_quant_conv.get()});
}

AutoencoderOutput VQModel::train_forward(const torch::Tensor& x, torch::Generator&) {
  auto [rec, q] = forward(x);
  AutoencoderOutput a;
  a.inputs = x;
  a.recon = rec;
  a.codebook_loss = q.loss;
  return a;
}
std::vector<torch::Tensor> VQModel::autoencoder_parameters() {
  return params_of({encoder.get(), decoder.get(), quantize.get(), quant_conv.get(), post_quant_conv.get()});
}

}  // namespace ldm
