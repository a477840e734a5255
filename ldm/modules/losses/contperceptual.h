// losses.LPIPSWithDiscriminator: the KL autoencoder's training loss (Esser
// et al. 2021, Rombach et al. 2022): L1 reconstruction over a learned
// log-variance, KL to N(0, I), and a PatchGAN hinge loss from disc_start
// weighted adaptively by the ratio of gradient norms at the decoder's last
// layer. The LPIPS term needs VGG/LPIPS weights the project does not ship:
// give them as params.perceptual_weights (a file); without it the term is
// switched off, and said so.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>

#include "ldm/modules/distributions.h"
#include "ldm/modules/losses/lpips.h"
#include "ldm/modules/layers.h"

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

class LPIPSWithDiscriminator : public torch::nn::Module {
 public:
  struct Options {
    int64_t disc_start = 0;
    double logvar_init = 0.0, kl_weight = 1.0, pixelloss_weight = 1.0, disc_factor = 1.0, disc_weight = 1.0,
           perceptual_weight = 1.0;
    int64_t disc_num_layers = 3, disc_in_channels = 3;
    std::string disc_loss = "hinge";  // hinge | vanilla
    std::string perceptual_weights;   // LPIPS weights file (this project's key)
  };
  explicit LPIPSWithDiscriminator(Options o);
  static std::shared_ptr<LPIPSWithDiscriminator> from_params(const Params& p);

  // optimizer 0: the autoencoder's loss; 1: the discriminator's.
  LossOut forward(const torch::Tensor& inputs, const torch::Tensor& recon, const DiagonalGaussianDistribution& post,
                  int optimizer_idx, int64_t global_step, const torch::Tensor& last_layer);
  bool disc_active(int64_t global_step) const { return o_.disc_factor > 0 && global_step >= o_.disc_start; }
  const Options& options() const { return o_; }
  torch::Tensor logvar;
  std::shared_ptr<NLayerDiscriminator> discriminator;
  std::shared_ptr<LPIPS> perceptual_loss;  // null when off

 private:
  Options o_;
};

// taming's VQLPIPSWithDiscriminator, the VQModel's loss: mean L1
// reconstruction + codebook_weight x the quantizer's loss + the same PatchGAN
// term. LPIPS as above.
class VQLPIPSWithDiscriminator : public torch::nn::Module {
 public:
  struct Options {
    int64_t disc_start = 0;
    double codebook_weight = 1.0, pixelloss_weight = 1.0, disc_factor = 1.0, disc_weight = 1.0, perceptual_weight = 1.0;
    int64_t disc_num_layers = 3, disc_in_channels = 3, disc_ndf = 64;
    std::string disc_loss = "hinge";
    std::string perceptual_weights;
  };
  explicit VQLPIPSWithDiscriminator(Options o);
  static std::shared_ptr<VQLPIPSWithDiscriminator> from_params(const Params& p);
  LossOut forward(const torch::Tensor& codebook_loss, const torch::Tensor& inputs, const torch::Tensor& recon,
                  int optimizer_idx, int64_t global_step, const torch::Tensor& last_layer);
  bool disc_active(int64_t global_step) const { return o_.disc_factor > 0 && global_step >= o_.disc_start; }
  std::shared_ptr<NLayerDiscriminator> discriminator;
  std::shared_ptr<LPIPS> perceptual_loss;

 private:
  Options o_;
};

// LPIPS from `weights` when perceptual_weight > 0, else null; a log line
// says when the term is off. `weight` is set to 0 then.
std::shared_ptr<LPIPS> make_perceptual(double& weight, const std::string& weights);

// Shared by both losses: the hinge or vanilla discriminator loss, and the
// adaptive generator weight ||grad nll|| / (||grad g|| + 1e-4) at `last_layer`.
torch::Tensor discriminator_loss(const std::string& kind, const torch::Tensor& real, const torch::Tensor& fake);
double adaptive_weight(const torch::Tensor& nll, const torch::Tensor& g, const torch::Tensor& last_layer, double scale);

}  // namespace ldm
