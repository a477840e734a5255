#include "ldm/modules/losses/discriminator.h"

#include <torch/torch.h>

#include <algorithm>
#include <iostream>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

NLayerDiscriminator::NLayerDiscriminator(int64_t in, int64_t ndf, int64_t n_layers) {
  main_ = register_module("main", std::make_shared<nn::Holder>());
  int idx = 0;
  auto leaky = [this, &idx] {
    layers_.push_back([](const torch::Tensor& x) { return torch::leaky_relu(x, 0.2); });
    ++idx;
  };
  // weights_init: conv N(0, 0.02), batch-norm weight N(1, 0.02), bias 0
  auto conv = [&](int64_t ci, int64_t co, int64_t stride, bool bias) {
    auto c = std::make_shared<nn::Conv>(2, ci, co, 4, stride, 1, bias);
    torch::NoGradGuard ng;
    if (c->weight.device().type() != torch::kMeta) {
      c->weight.normal_(0.0, 0.02);
      if (bias) c->bias.zero_();
    }
    main_->add(std::to_string(idx++), c);
    layers_.push_back([c](const torch::Tensor& x) { return c->forward(x); });
  };
  auto norm = [&](int64_t ch) {
    auto bn = torch::nn::BatchNorm2d(ch);
    torch::NoGradGuard ng;
    bn->weight.normal_(1.0, 0.02);
    bn->bias.zero_();
    main_->register_module(std::to_string(idx++), bn);
    layers_.push_back([bn](const torch::Tensor& x) mutable { return bn->forward(x); });
  };
  conv(in, ndf, 2, true);
  leaky();
  int64_t mult = 1, prev = 1;
  for (int64_t n = 1; n < n_layers; ++n) {
    prev = mult;
    mult = std::min<int64_t>(int64_t(1) << n, 8);
    conv(ndf * prev, ndf * mult, 2, false);
    norm(ndf * mult);
    leaky();
  }
  prev = mult;
  mult = std::min<int64_t>(int64_t(1) << n_layers, 8);
  conv(ndf * prev, ndf * mult, 1, false);
  norm(ndf * mult);
  leaky();
  conv(ndf * mult, 1, 1, true);
}

torch::Tensor NLayerDiscriminator::forward(const torch::Tensor& x) {
  auto h = x;
  for (auto& f : layers_) h = f(h);
  return h;
}

PatchGANOptions PatchGANOptions::from_params(const Params& p, const std::string& target) {
  PatchGANOptions o;
  o.disc_start = p.req<int64_t>("disc_start");
  o.disc_factor = p.get<double>("disc_factor", 1.0);
  o.disc_weight = p.get<double>("disc_weight", 1.0);
  o.disc_num_layers = p.get<int64_t>("disc_num_layers", 3);
  o.disc_in_channels = p.get<int64_t>("disc_in_channels", 3);
  o.disc_loss = p.get<std::string>("disc_loss", "hinge");
  if (o.disc_loss != "hinge" && o.disc_loss != "vanilla")
    throw Error(p.where() + ".disc_loss: expected hinge or vanilla, got \"" + o.disc_loss + "\" (" + target + ")");
  if (p.get<bool>("use_actnorm", false)) throw Error(p.where() + ".use_actnorm: only false (BatchNorm) is supported");
  if (p.get<bool>("disc_conditional", false)) throw Error(p.where() + ".disc_conditional: only false is supported");
  return o;
}

namespace {
// LPIPS from `weights` when weight > 0, else null; a log line says when the
// term is off, and `weight` is set to 0 then.
std::shared_ptr<LPIPS> make_perceptual(double& weight, const std::string& weights) {
  if (weight <= 0) return nullptr;
  if (weights.empty()) {
    std::cerr << "note: LPIPS perceptual loss is off (perceptual_weight " << weight
              << " ignored): give the LPIPS/VGG16 weights as lossconfig.params.perceptual_weights\n";
    weight = 0;
    return nullptr;
  }
  return LPIPS::from_file(weights);
}
}  // namespace

GANAutoencoderLoss::GANAutoencoderLoss(PatchGANOptions gan, double& perceptual_weight, const std::string& weights)
    : gan_(std::move(gan)) {
  perceptual_loss = make_perceptual(perceptual_weight, weights);
  if (perceptual_loss) register_module("perceptual_loss", perceptual_loss);
  discriminator = register_module(
      "discriminator", std::make_shared<NLayerDiscriminator>(gan_.disc_in_channels, gan_.disc_ndf, gan_.disc_num_layers));
}

LossOut GANAutoencoderLoss::forward(const AutoencoderOutput& a, int idx, int64_t step, const torch::Tensor& last_layer) {
  const double factor = step >= gan_.disc_start ? gan_.disc_factor : 0.0;  // adopt_weight
  LossOut out;
  if (idx == 0) {
    auto r = reconstruction(a);
    auto loss = r.loss;
    double d_weight = 0.0;
    torch::Tensor g_loss;
    if (factor > 0) {  // before disc_start the GAN term is 0 times anything: skipped
      g_loss = -discriminator->forward(a.recon).mean();
      d_weight = adaptive_weight(r.nll_loss, g_loss, last_layer, gan_.disc_weight);
      loss = loss + d_weight * factor * g_loss;
    }
    out.loss = loss;
    out.log = std::move(r.log);
    out.log["total_loss"] = loss.item<double>();
    out.log["d_weight"] = d_weight;
    out.log["disc_factor"] = factor;
    out.log["g_loss"] = g_loss.defined() ? g_loss.item<double>() : 0.0;
  } else {
    auto real = discriminator->forward(a.inputs.detach()), fake = discriminator->forward(a.recon.detach());
    out.loss = factor * discriminator_loss(gan_.disc_loss, real, fake);
    out.log = {{"disc_loss", out.loss.item<double>()}, {"logits_real", real.mean().item<double>()},
               {"logits_fake", fake.mean().item<double>()}};
  }
  return out;
}

torch::Tensor discriminator_loss(const std::string& kind, const torch::Tensor& real, const torch::Tensor& fake) {
  if (kind == "hinge") return 0.5 * (torch::relu(1 - real).mean() + torch::relu(1 + fake).mean());
  return 0.5 * (torch::softplus(-real).mean() + torch::softplus(fake).mean());
}

double adaptive_weight(const torch::Tensor& nll, const torch::Tensor& g, const torch::Tensor& last_layer, double scale) {
  auto gn = torch::autograd::grad({nll}, {last_layer}, {}, true)[0].norm();
  auto gg = torch::autograd::grad({g}, {last_layer}, {}, true)[0].norm();
  return std::clamp((gn / (gg + 1e-4)).item<double>(), 0.0, 1e4) * scale;
}

}  // namespace ldm
