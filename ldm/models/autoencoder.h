// models/autoencoder: AutoencoderKL, VQModel (and the identity first stage
// the reference uses for pixel-space or pre-encoded data).
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <vector>

#include "ldm/modules/diffusionmodules/model.h"
#include "ldm/modules/distributions.h"
#include "ldm/modules/ema.h"
#include "ldm/modules/losses/discriminator.h"
#include "ldm/modules/vqvae/quantize.h"

namespace ldm {
class Params;

// What a LatentDiffusion needs of its first stage.
class FirstStage : public torch::nn::Module {
 public:
  // before scale_factor; a posterior sample draws from `gen` (else the default generator)
  virtual torch::Tensor encode_to_latent(const torch::Tensor& x, bool sample,
                                         std::optional<torch::Generator> gen = std::nullopt) = 0;
  virtual torch::Tensor decode(const torch::Tensor& z) = 0;
  virtual int64_t downsample_factor() const { return 1; }  // pixels per latent, per side
  virtual int64_t image_channels() const { return 0; }     // 0: same as the latents

  // Training with a GAN autoencoder loss (the trainer's autoencoder task):
  // the reconstruction and what the loss needs (a posterior sample drawn
  // from `g`, or the codebook loss); the parameters the reference's opt_ae
  // trains; the decoder's last layer (the adaptive GAN weight); and a
  // deterministic reconstruction for image logs. Not every first stage trains.
  virtual AutoencoderOutput train_forward(const torch::Tensor& x, torch::Generator& g);
  virtual std::vector<torch::Tensor> autoencoder_parameters();
  virtual torch::Tensor last_layer();
  virtual torch::Tensor reconstruct(const torch::Tensor& x);

  // The reference's EMA of the weights (AutoencoderKL's ema_decay, VQModel's
  // use_ema): LitEma buffers model_ema.* over the trainable parameters there
  // when made, so the trainer makes it again once the loss (its discriminator
  // included, as the reference's) is registered. Updated after each training
  // step; a LatentDiffusion decodes with the trained weights, as the reference.
  double ema_decay = 0;  // 0: no EMA
  std::shared_ptr<LitEma> model_ema;
  void make_ema();
};

class AutoencoderKL : public FirstStage {
 public:
  AutoencoderKL(const DDConfig& dd, int64_t embed_dim);
  static std::shared_ptr<AutoencoderKL> from_params(const Params& p);
  DiagonalGaussianDistribution encode(const torch::Tensor& x);
  torch::Tensor decode(const torch::Tensor& z) override;
  torch::Tensor encode_to_latent(const torch::Tensor& x, bool sample, std::optional<torch::Generator> gen) override;
  // reconstruction and posterior (sample_posterior: sample, else mode)
  std::pair<torch::Tensor, DiagonalGaussianDistribution> forward(const torch::Tensor& x, bool sample_posterior = true);
  int64_t downsample_factor() const override { return int64_t(1) << (dd.ch_mult.size() - 1); }
  int64_t image_channels() const override { return dd.out_ch; }
  AutoencoderOutput train_forward(const torch::Tensor& x, torch::Generator& g) override;
  std::vector<torch::Tensor> autoencoder_parameters() override;
  torch::Tensor last_layer() override { return decoder->last_layer(); }
  torch::Tensor reconstruct(const torch::Tensor& x) override { return decode(encode(x).mode()); }
  std::shared_ptr<Encoder> encoder;
  std::shared_ptr<Decoder> decoder;
  std::shared_ptr<nn::Conv> quant_conv, post_quant_conv;
  DDConfig dd;
  int64_t embed_dim;
};

// VQModel / VQModelInterface: encoder -> quant_conv -> VectorQuantizer2 ->
// post_quant_conv -> decoder. As an LDM first stage (VQModelInterface) the
// latents are the pre-quantization features and decode() quantizes them.
class VQModel : public FirstStage {
 public:
  VQModel(const DDConfig& dd, int64_t n_embed, int64_t embed_dim, bool sane_index_shape = false);
  static std::shared_ptr<VQModel> from_params(const Params& p, const std::string& target);
  torch::Tensor encode_prequant(const torch::Tensor& x);
  torch::Tensor decode_quant(const torch::Tensor& quant);
  // reconstruction with the codebook loss (the reference's forward)
  std::pair<torch::Tensor, VectorQuantizer2::Out> forward(const torch::Tensor& x);
  torch::Tensor encode_to_latent(const torch::Tensor& x, bool, std::optional<torch::Generator>) override {
    return encode_prequant(x);
  }
  torch::Tensor decode(const torch::Tensor& h) override { return decode_quant(quantize->forward(h).z_q); }
  int64_t downsample_factor() const override { return int64_t(1) << (dd.ch_mult.size() - 1); }
  int64_t image_channels() const override { return dd.out_ch; }
  AutoencoderOutput train_forward(const torch::Tensor& x, torch::Generator& g) override;
  std::vector<torch::Tensor> autoencoder_parameters() override;
  torch::Tensor last_layer() override { return decoder->last_layer(); }
  torch::Tensor reconstruct(const torch::Tensor& x) override { return forward(x).first; }
  std::shared_ptr<Encoder> encoder;
  std::shared_ptr<Decoder> decoder;
  std::shared_ptr<VectorQuantizer2> quantize;
  std::shared_ptr<nn::Conv> quant_conv, post_quant_conv;
  DDConfig dd;
};

class IdentityFirstStage : public FirstStage {
 public:
  torch::Tensor encode_to_latent(const torch::Tensor& x, bool, std::optional<torch::Generator>) override { return x; }
  torch::Tensor decode(const torch::Tensor& z) override { return z; }
};

}  // namespace ldm
