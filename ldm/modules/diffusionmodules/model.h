// The first-stage (VAE) Encoder and Decoder of diffusionmodules/model.py,
// with every ddconfig key and the reference names.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "ldm/modules/attention.h"
#include "ldm/modules/layers.h"

namespace ldm {
class Params;

struct DDConfig {
  int64_t ch = 128, out_ch = 3;
  std::vector<int> ch_mult{1, 2, 4, 8};
  int num_res_blocks = 2;
  std::vector<int> attn_resolutions;
  double dropout = 0.0;
  bool resamp_with_conv = true;
  int64_t in_channels = 3, resolution = 256, z_channels = 4;
  bool double_z = true, give_pre_end = false, tanh_out = false;
  std::string attn_type = "vanilla";  // vanilla | linear | none (use_linear_attn -> linear)
  static DDConfig from_params(const Params& p);
};

class ResnetBlock : public torch::nn::Module {
 public:
  ResnetBlock(int64_t in, int64_t out, bool conv_shortcut, double dropout, int64_t temb_channels);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});
  std::shared_ptr<nn::GroupNorm> norm1, norm2;
  std::shared_ptr<nn::Conv> conv1, conv2, shortcut;
  std::shared_ptr<nn::Linear> temb_proj;
  double dropout;
};

// The VAE's AttnBlock is the same layer as attention.SpatialSelfAttention.
using AttnBlock = SpatialSelfAttention;

// Any of AttnBlock / LinAttnBlock / identity, by attn_type.
struct AttnFn {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> fn;
};

class Encoder : public torch::nn::Module {
 public:
  explicit Encoder(const DDConfig& c);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  DDConfig c_;
  std::shared_ptr<nn::Conv> conv_in, conv_out;
  std::vector<std::vector<std::shared_ptr<ResnetBlock>>> blocks;
  std::vector<std::vector<AttnFn>> attns;
  std::vector<std::shared_ptr<nn::Conv>> downs;  // null: avg-pool or last level
  std::shared_ptr<ResnetBlock> mid1, mid2;
  AttnFn mid_attn;
  std::shared_ptr<nn::GroupNorm> norm_out;
};

class Decoder : public torch::nn::Module {
 public:
  explicit Decoder(const DDConfig& c);
  torch::Tensor forward(const torch::Tensor& z);
  // the reference's get_last_layer(): the GAN loss's adaptive weight reads its gradient
  const torch::Tensor& last_layer() const { return conv_out->weight; }

 private:
  DDConfig c_;
  std::shared_ptr<nn::Conv> conv_in, conv_out;
  std::vector<std::vector<std::shared_ptr<ResnetBlock>>> blocks;  // by level (0 = highest resolution)
  std::vector<std::vector<AttnFn>> attns;
  std::vector<std::shared_ptr<nn::Conv>> ups;
  std::shared_ptr<ResnetBlock> mid1, mid2;
  AttnFn mid_attn;
  std::shared_ptr<nn::GroupNorm> norm_out;
};

}  // namespace ldm
