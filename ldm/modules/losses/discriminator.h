// The PatchGAN term both autoencoder losses share (taming-transformers'
// discriminator.model and losses): pix2pix's NLayerDiscriminator, the hinge or
// vanilla discriminator loss, and the generator term weighted adaptively by
// the ratio of gradient norms at the decoder's last layer (Esser et al. 2021,
// eq. 7), switched on from disc_start.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ldm/modules/distributions.h"
#include "ldm/modules/layers.h"
#include "ldm/modules/losses/lpips.h"

namespace ldm {
class Params;

// PatchGAN discriminator (pix2pix's NLayerDiscriminator) with BatchNorm;
// registered names main.N.* as the reference.
class NLayerDiscriminator : public torch::nn::Module {
 public:
  NLayerDiscriminator(int64_t input_nc = 3, int64_t ndf = 64, int64_t n_layers = 3);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::shared_ptr<nn::Holder> main_;
  std::vector<std::function<torch::Tensor(const torch::Tensor&)>> layers_;
};

struct LossOut {
  torch::Tensor loss;
  std::map<std::string, double> log;  // the reference's log names (total_loss, rec_loss, kl_loss, ...)
};

// What an autoencoder's training forward gives its loss.
struct AutoencoderOutput {
  torch::Tensor inputs, recon;
  std::optional<DiagonalGaussianDistribution> posterior;  // KL models
  torch::Tensor codebook_loss;                            // VQ models
};

struct PatchGANOptions {
  int64_t disc_start = 0;
  double disc_factor = 1.0, disc_weight = 1.0;
  int64_t disc_num_layers = 3, disc_in_channels = 3, disc_ndf = 64;
  std::string disc_loss = "hinge";  // hinge | vanilla
  // reads the disc_* keys (and refuses use_actnorm / disc_conditional)
  static PatchGANOptions from_params(const Params& p, const std::string& target);
};

// An autoencoder loss with the PatchGAN term: subclasses give the
// reconstruction side; optimizer 0 minimises it plus the generator term,
// optimizer 1 trains the discriminator.
class GANAutoencoderLoss : public torch::nn::Module {
 public:
  GANAutoencoderLoss(PatchGANOptions gan, double& perceptual_weight, const std::string& perceptual_weights);
  LossOut forward(const AutoencoderOutput& a, int optimizer_idx, int64_t global_step, const torch::Tensor& last_layer);
  bool disc_active(int64_t global_step) const { return gan_.disc_factor > 0 && global_step >= gan_.disc_start; }
  std::shared_ptr<NLayerDiscriminator> discriminator;
  std::shared_ptr<LPIPS> perceptual_loss;  // null when off

 protected:
  struct Reconstruction {
    torch::Tensor loss, nll_loss;  // the whole reconstruction side, and the part the adaptive weight balances
    std::map<std::string, double> log;
  };
  virtual Reconstruction reconstruction(const AutoencoderOutput& a) = 0;
  PatchGANOptions gan_;
};

torch::Tensor discriminator_loss(const std::string& kind, const torch::Tensor& real, const torch::Tensor& fake);
double adaptive_weight(const torch::Tensor& nll, const torch::Tensor& g, const torch::Tensor& last_layer, double scale);

}  // namespace ldm
