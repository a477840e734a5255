// LPIPS (Zhang et al. 2018) as taming's LPIPS: a frozen VGG16 trunk, unit-
// normalised features at relu1_2..relu5_3, squared differences weighted by
// five 1x1 "lin" layers and averaged. The weights are the user's (the
// torchvision VGG16 trunk + the lpips package's lin layers, under taming's
// names: net.sliceK.N.*, linK.model.1.weight, optional scaling_layer.*);
// nothing is downloaded.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "ldm/modules/layers.h"

namespace ldm {

class LPIPS : public torch::nn::Module {
 public:
  LPIPS();
  // Loads `path` (.safetensors/.ckpt; keys may carry a loss.perceptual_loss. or
  // perceptual_loss. prefix) strictly; the network is frozen and in eval mode.
  static std::shared_ptr<LPIPS> from_file(const std::string& path);
  // inputs in [-1, 1], [N, 3 or 1, H, W] -> [N, 1, 1, 1]
  torch::Tensor forward(const torch::Tensor& a, const torch::Tensor& b);

 private:
  std::vector<torch::Tensor> features(const torch::Tensor& x);
  torch::Tensor shift_, scale_;
  std::vector<std::vector<std::shared_ptr<nn::Conv>>> slices_;  // convs per slice (each followed by ReLU)
  std::vector<std::shared_ptr<nn::Conv>> lins_;
};

}  // namespace ldm
