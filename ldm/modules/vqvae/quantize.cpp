#include "ldm/modules/vqvae/quantize.h"

#include <torch/torch.h>

namespace ldm {

VectorQuantizer2::VectorQuantizer2(int64_t n, int64_t d, double b, bool leg, bool sane)
    : n_e(n), e_dim(d), beta(b), legacy(leg), sane_index_shape(sane) {
  embedding = register_module("embedding", std::make_shared<nn::Embedding>(n, d));
  if (nn::init_mode() == nn::Init::Random) {
    torch::NoGradGuard ng;
    embedding->weight.uniform_(-1.0 / n, 1.0 / n);
  }
}

VectorQuantizer2::Out VectorQuantizer2::forward(const torch::Tensor& z_in) {
  auto z = z_in.permute({0, 2, 3, 1}).contiguous();  // b h w c
  auto zf = z.view({-1, e_dim});
  const auto& E = embedding->weight;
  // |z|^2 + |e|^2 - 2 z.e
  auto dist = zf.pow(2).sum(1, true) + E.pow(2).sum(1) - 2 * torch::matmul(zf, E.t());
  auto idx = dist.argmin(1);
  auto z_q = embedding->forward(idx).view(z.sizes());
  auto commit = torch::mean((z_q.detach() - z).pow(2)), codebook = torch::mean((z_q - z.detach()).pow(2));
  // legacy weights the commitment term with 1 and the codebook term with beta (reference quirk)
  Out o;
  o.loss = legacy ? commit + beta * codebook : beta * commit + codebook;
  z_q = z + (z_q - z).detach();  // straight-through estimator
  o.z_q = z_q.permute({0, 3, 1, 2}).contiguous();
  auto onehot = torch::one_hot(idx, n_e).to(z.scalar_type());
  auto avg = onehot.mean(0);
  o.perplexity = torch::exp(-torch::sum(avg * torch::log(avg + 1e-10)));
  o.indices = sane_index_shape ? idx.view({z.size(0), z.size(1), z.size(2)}) : idx;
  return o;
}

torch::Tensor VectorQuantizer2::get_codebook_entry(const torch::Tensor& indices, const std::vector<int64_t>& shape) {
  auto z_q = embedding->forward(indices.reshape({-1}));
  if (shape.empty()) return z_q;
  return z_q.view(shape).permute({0, 3, 1, 2}).contiguous();
}

}  // namespace ldm
