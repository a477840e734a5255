#include "ldm/modules/losses/contperceptual.h"

#include <torch/torch.h>

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

LPIPSWithDiscriminator::LPIPSWithDiscriminator(Options o) : o_(o) {
  if (o_.disc_loss != "hinge" && o_.disc_loss != "vanilla")
    throw Error("LPIPSWithDiscriminator.disc_loss: expected hinge or vanilla, got \"" + o_.disc_loss + "\"");
  perceptual_loss = make_perceptual(o_.perceptual_weight, o_.perceptual_weights);
  if (perceptual_loss) register_module("perceptual_loss", perceptual_loss);
  logvar = register_parameter("logvar", torch::full({}, o_.logvar_init));
  discriminator = register_module("discriminator", std::make_shared<NLayerDiscriminator>(o_.disc_in_channels, 64, o_.disc_num_layers));
}

std::shared_ptr<LPIPSWithDiscriminator> LPIPSWithDiscriminator::from_params(const Params& p) {
  Options o;
  o.disc_start = p.req<int64_t>("disc_start");
  o.logvar_init = p.get<double>("logvar_init", 0.0);
  o.kl_weight = p.get<double>("kl_weight", 1.0);
  o.pixelloss_weight = p.get<double>("pixelloss_weight", 1.0);
  o.disc_factor = p.get<double>("disc_factor", 1.0);
  o.disc_weight = p.get<double>("disc_weight", 1.0);
  o.perceptual_weight = p.get<double>("perceptual_weight", 1.0);
  o.disc_num_layers = p.get<int64_t>("disc_num_layers", 3);
  o.disc_in_channels = p.get<int64_t>("disc_in_channels", 3);
  o.disc_loss = p.get<std::string>("disc_loss", "hinge");
  o.perceptual_weights = p.get<std::string>("perceptual_weights", "");
  if (p.get<bool>("use_actnorm", false)) throw Error(p.where() + ".use_actnorm: only false (BatchNorm) is supported");
  if (p.get<bool>("disc_conditional", false)) throw Error(p.where() + ".disc_conditional: only false is supported");
  p.check_unused("ldm.modules.losses.LPIPSWithDiscriminator");
  return std::make_shared<LPIPSWithDiscriminator>(o);
}

LossOut LPIPSWithDiscriminator::forward(const torch::Tensor& x, const torch::Tensor& rec,
                                        const DiagonalGaussianDistribution& post, int idx, int64_t step,
                                        const torch::Tensor& last_layer) {
  const double n = static_cast<double>(x.size(0));
  const double factor = step >= o_.disc_start ? o_.disc_factor : 0.0;  // adopt_weight
  LossOut out;
  if (idx == 0) {
    auto rec_loss = (x - rec).abs();
    double p_log = 0;
    if (perceptual_loss) {
      auto p_loss = perceptual_loss->forward(x, rec);
      p_log = p_loss.mean().item<double>();
      rec_loss = rec_loss + o_.perceptual_weight * p_loss;
    }
    auto nll = rec_loss / logvar.exp() + logvar;
    auto nll_loss = nll.sum() / n;
    auto kl_loss = post.kl().sum() / n;
    auto loss = nll_loss + o_.kl_weight * kl_loss;
    double d_weight = 0.0;
    torch::Tensor g_loss;
    if (factor > 0) {  // before disc_start the GAN term is 0 times anything: skipped
      g_loss = -discriminator->forward(rec).mean();
      d_weight = adaptive_weight(nll_loss, g_loss, last_layer, o_.disc_weight);
      loss = loss + d_weight * factor * g_loss;
    }
    out.loss = loss;
    out.log = {{"total_loss", loss.item<double>()},      {"logvar", logvar.item<double>()},
               {"kl_loss", kl_loss.item<double>()},      {"nll_loss", nll_loss.item<double>()},
               {"rec_loss", rec_loss.mean().item<double>()}, {"d_weight", d_weight},
               {"disc_factor", factor},                  {"g_loss", g_loss.defined() ? g_loss.item<double>() : 0.0}};
    if (perceptual_loss) out.log["p_loss"] = p_log;
  } else {
    auto real = discriminator->forward(x.detach()), fake = discriminator->forward(rec.detach());
    out.loss = factor * discriminator_loss(o_.disc_loss, real, fake);
    out.log = {{"disc_loss", out.loss.item<double>()}, {"logits_real", real.mean().item<double>()},
               {"logits_fake", fake.mean().item<double>()}};
  }
  return out;
}

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

torch::Tensor discriminator_loss(const std::string& kind, const torch::Tensor& real, const torch::Tensor& fake) {
  if (kind == "hinge") return 0.5 * (torch::relu(1 - real).mean() + torch::relu(1 + fake).mean());
  return 0.5 * (torch::softplus(-real).mean() + torch::softplus(fake).mean());
}

double adaptive_weight(const torch::Tensor& nll, const torch::Tensor& g, const torch::Tensor& last_layer, double scale) {
  auto gn = torch::autograd::grad({nll}, {last_layer}, {}, true)[0].norm();
  auto gg = torch::autograd::grad({g}, {last_layer}, {}, true)[0].norm();
  return std::clamp((gn / (gg + 1e-4)).item<double>(), 0.0, 1e4) * scale;
}

VQLPIPSWithDiscriminator::VQLPIPSWithDiscriminator(Options o) : o_(o) {
  if (o_.disc_loss != "hinge" && o_.disc_loss != "vanilla")
    throw Error("VQLPIPSWithDiscriminator.disc_loss: expected hinge or vanilla, got \"" + o_.disc_loss + "\"");
  perceptual_loss = make_perceptual(o_.perceptual_weight, o_.perceptual_weights);
  if (perceptual_loss) register_module("perceptual_loss", perceptual_loss);
  discriminator = register_module("discriminator",
                                  std::make_shared<NLayerDiscriminator>(o_.disc_in_channels, o_.disc_ndf, o_.disc_num_layers));
}

std::shared_ptr<VQLPIPSWithDiscriminator> VQLPIPSWithDiscriminator::from_params(const Params& p) {
  Options o;
  o.disc_start = p.req<int64_t>("disc_start");
  o.codebook_weight = p.get<double>("codebook_weight", 1.0);
  o.pixelloss_weight = p.get<double>("pixelloss_weight", 1.0);
  o.disc_factor = p.get<double>("disc_factor", 1.0);
  o.disc_weight = p.get<double>("disc_weight", 1.0);
  o.perceptual_weight = p.get<double>("perceptual_weight", 1.0);
  o.disc_num_layers = p.get<int64_t>("disc_num_layers", 3);
  o.disc_in_channels = p.get<int64_t>("disc_in_channels", 3);
  o.disc_ndf = p.get<int64_t>("disc_ndf", 64);
  o.disc_loss = p.get<std::string>("disc_loss", "hinge");
  o.perceptual_weights = p.get<std::string>("perceptual_weights", "");
  if (p.get<bool>("use_actnorm", false)) throw Error(p.where() + ".use_actnorm: only false (BatchNorm) is supported");
  if (p.get<bool>("disc_conditional", false)) throw Error(p.where() + ".disc_conditional: only false is supported");
  p.check_unused("taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator");
  return std::make_shared<VQLPIPSWithDiscriminator>(o);
}

LossOut VQLPIPSWithDiscriminator::forward(const torch::Tensor& qloss, const torch::Tensor& x, const torch::Tensor& rec,
                                          int idx, int64_t step, const torch::Tensor& last_layer) {
  const double factor = step >= o_.disc_start ? o_.disc_factor : 0.0;
  LossOut out;
  if (idx == 0) {
    auto rec_loss = (x - rec).abs() * o_.pixelloss_weight;
    if (perceptual_loss) rec_loss = rec_loss + o_.perceptual_weight * perceptual_loss->forward(x, rec);
    auto nll_loss = rec_loss.mean();
    auto loss = nll_loss + o_.codebook_weight * qloss.mean();
    double d_weight = 0.0;
    torch::Tensor g_loss;
    if (factor > 0) {
      g_loss = -discriminator->forward(rec).mean();
      d_weight = adaptive_weight(nll_loss, g_loss, last_layer, o_.disc_weight);
      loss = loss + d_weight * factor * g_loss;
    }
    out.loss = loss;
    out.log = {{"total_loss", loss.item<double>()},   {"quant_loss", qloss.mean().item<double>()},
               {"nll_loss", nll_loss.item<double>()}, {"rec_loss", rec_loss.mean().item<double>()},
               {"d_weight", d_weight},                {"disc_factor", factor},
               {"g_loss", g_loss.defined() ? g_loss.item<double>() : 0.0}};
  } else {
    auto real = discriminator->forward(x.detach()), fake = discriminator->forward(rec.detach());
    out.loss = factor * discriminator_loss(o_.disc_loss, real, fake);
    out.log = {{"disc_loss", out.loss.item<double>()}, {"logits_real", real.mean().item<double>()},
               {"logits_fake", fake.mean().item<double>()}};
  }
  return out;
}

}  // namespace ldm
