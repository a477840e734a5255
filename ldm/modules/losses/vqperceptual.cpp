#include "ldm/modules/losses/vqperceptual.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

VQLPIPSWithDiscriminator::VQLPIPSWithDiscriminator(Options o)
    : GANAutoencoderLoss(o.gan, o.perceptual_weight, o.perceptual_weights), o_(o) {}

std::shared_ptr<VQLPIPSWithDiscriminator> VQLPIPSWithDiscriminator::from_params(const Params& p) {
  const char* target = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator";
  Options o;
  o.gan = PatchGANOptions::from_params(p, target);
  o.gan.disc_ndf = p.get<int64_t>("disc_ndf", 64);
  o.codebook_weight = p.get<double>("codebook_weight", 1.0);
  o.pixelloss_weight = p.get<double>("pixelloss_weight", 1.0);
  o.perceptual_weight = p.get<double>("perceptual_weight", 1.0);
  o.perceptual_weights = p.get<std::string>("perceptual_weights", "");
  p.check_unused(target);
  return std::make_shared<VQLPIPSWithDiscriminator>(o);
}

GANAutoencoderLoss::Reconstruction VQLPIPSWithDiscriminator::reconstruction(const AutoencoderOutput& a) {
  if (!a.codebook_loss.defined()) throw Error("VQLPIPSWithDiscriminator: needs the codebook loss of a VQ autoencoder");
  auto rec_loss = (a.inputs - a.recon).abs() * o_.pixelloss_weight;
  if (perceptual_loss) rec_loss = rec_loss + o_.perceptual_weight * perceptual_loss->forward(a.inputs, a.recon);
  Reconstruction r;
  r.nll_loss = rec_loss.mean();
  auto qloss = a.codebook_loss.mean();
  r.loss = r.nll_loss + o_.codebook_weight * qloss;
  r.log = {{"quant_loss", qloss.item<double>()},
           {"nll_loss", r.nll_loss.item<double>()},
           {"rec_loss", rec_loss.mean().item<double>()}};
  return r;
}

}  // namespace ldm
