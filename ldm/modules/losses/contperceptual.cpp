#include "ldm/modules/losses/contperceptual.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

LPIPSWithDiscriminator::LPIPSWithDiscriminator(Options o)
    : GANAutoencoderLoss(o.gan, o.perceptual_weight, o.perceptual_weights), o_(o) {
  logvar = register_parameter("logvar", torch::full({}, o_.logvar_init));
}

std::shared_ptr<LPIPSWithDiscriminator> LPIPSWithDiscriminator::from_params(const Params& p) {
  Options o;
  o.gan = PatchGANOptions::from_params(p, "ldm.modules.losses.LPIPSWithDiscriminator");
  o.logvar_init = p.get<double>("logvar_init", 0.0);
  o.kl_weight = p.get<double>("kl_weight", 1.0);
  p.ignore({"pixelloss_weight"});  // accepted and unused, as in the reference
  o.perceptual_weight = p.get<double>("perceptual_weight", 1.0);
  o.perceptual_weights = p.get<std::string>("perceptual_weights", "");
  p.check_unused("ldm.modules.losses.LPIPSWithDiscriminator");
  return std::make_shared<LPIPSWithDiscriminator>(o);
}

GANAutoencoderLoss::Reconstruction LPIPSWithDiscriminator::reconstruction(const AutoencoderOutput& a) {
  if (!a.posterior) throw Error("LPIPSWithDiscriminator: needs the posterior of a KL autoencoder");
  const auto& x = a.inputs;
  const double n = static_cast<double>(x.size(0));
  auto rec_loss = (x - a.recon).abs();
  double p_log = 0;
  if (perceptual_loss) {
    auto p_loss = perceptual_loss->forward(x, a.recon);
    p_log = p_loss.mean().item<double>();
    rec_loss = rec_loss + o_.perceptual_weight * p_loss;
  }
  auto nll = rec_loss / logvar.exp() + logvar;
  Reconstruction r;
  r.nll_loss = nll.sum() / n;
  auto kl_loss = a.posterior->kl().sum() / n;
  r.loss = r.nll_loss + o_.kl_weight * kl_loss;
  r.log = {{"logvar", logvar.item<double>()},
           {"kl_loss", kl_loss.item<double>()},
           {"nll_loss", r.nll_loss.item<double>()},
           {"rec_loss", rec_loss.mean().item<double>()}};
  if (perceptual_loss) r.log["p_loss"] = p_log;
  return r;
}

}  // namespace ldm
