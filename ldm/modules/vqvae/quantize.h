// VectorQuantizer2 (VQ-VAE codebook, van den Oord et al. 2017; taming's
// improved version): nearest-codebook lookup with a straight-through
// gradient and the codebook/commitment loss. remap is not supported.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>

#include "ldm/modules/layers.h"

namespace ldm {

class VectorQuantizer2 : public torch::nn::Module {
 public:
  VectorQuantizer2(int64_t n_e, int64_t e_dim, double beta, bool legacy = true, bool sane_index_shape = false);
  struct Out {
    torch::Tensor z_q, loss, indices, perplexity;
  };
  Out forward(const torch::Tensor& z);  // z [B, C, H, W]
  // indices -> [B, C, H, W] codebook vectors (shape = {B, H, W, C})
  torch::Tensor get_codebook_entry(const torch::Tensor& indices, const std::vector<int64_t>& shape);
  std::shared_ptr<nn::Embedding> embedding;
  int64_t n_e, e_dim;
  double beta;
  bool legacy, sane_index_shape;
};

}  // namespace ldm
