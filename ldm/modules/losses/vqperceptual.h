// taming's VQLPIPSWithDiscriminator, the VQModel's loss: mean L1
// reconstruction (+ LPIPS when its weights are given) + codebook_weight x the
// quantizer's loss, and the PatchGAN term (discriminator.h).
#pragma once
#include "ldm/modules/losses/discriminator.h"

namespace ldm {

class VQLPIPSWithDiscriminator : public GANAutoencoderLoss {
 public:
  struct Options {
    PatchGANOptions gan;
    double codebook_weight = 1.0, pixelloss_weight = 1.0, perceptual_weight = 1.0;
    std::string perceptual_weights;
  };
  explicit VQLPIPSWithDiscriminator(Options o);
  static std::shared_ptr<VQLPIPSWithDiscriminator> from_params(const Params& p);

 private:
  Reconstruction reconstruction(const AutoencoderOutput& a) override;
  Options o_;
};

}  // namespace ldm
