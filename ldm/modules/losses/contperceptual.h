// losses.LPIPSWithDiscriminator: the KL autoencoder's training loss (Esser
// et al. 2021, Rombach et al. 2022): L1 reconstruction over a learned
// log-variance, KL to N(0, I), and the PatchGAN term (discriminator.h). The
// LPIPS term needs VGG/LPIPS weights the project does not ship: give them as
// params.perceptual_weights (a file); without it the term is switched off,
// and said so.
#pragma once
#include "ldm/modules/losses/discriminator.h"

namespace ldm {

class LPIPSWithDiscriminator : public GANAutoencoderLoss {
 public:
  struct Options {
    PatchGANOptions gan;
    double logvar_init = 0.0, kl_weight = 1.0, perceptual_weight = 1.0;
    std::string perceptual_weights;  // LPIPS weights file (this project's key)
  };
  explicit LPIPSWithDiscriminator(Options o);
  static std::shared_ptr<LPIPSWithDiscriminator> from_params(const Params& p);
  const Options& options() const { return o_; }
  torch::Tensor logvar;

 private:
  Reconstruction reconstruction(const AutoencoderOutput& a) override;
  Options o_;
};

}  // namespace ldm
