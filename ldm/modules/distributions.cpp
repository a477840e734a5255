#include "ldm/modules/distributions.h"

#include <torch/torch.h>

#include <cmath>

namespace ldm {

DiagonalGaussianDistribution::DiagonalGaussianDistribution(const torch::Tensor& p, bool det)
    : parameters(p), deterministic(det) {
  auto parts = p.chunk(2, 1);
  mean = parts[0];
  logvar = parts[1].clamp(-30.0, 20.0);
  std = torch::exp(0.5 * logvar);
  var = torch::exp(logvar);
  if (det) std = var = torch::zeros_like(mean);
}

torch::Tensor DiagonalGaussianDistribution::sample(std::optional<torch::Generator> gen) const {
  // a CPU generator draws on the CPU (as torch does with generator=) and the noise moves to the mean's device
  auto noise = gen ? torch::randn(mean.sizes(), *gen, mean.options().device(gen->device())).to(mean.device())
                   : torch::randn_like(mean);
  return mean + std * noise;
}

torch::Tensor DiagonalGaussianDistribution::kl(const DiagonalGaussianDistribution* o) const {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < mean.dim(); ++d) dims.push_back(d);
  if (deterministic) return torch::zeros({mean.size(0)}, mean.options());
  if (!o) return 0.5 * torch::sum(mean.pow(2) + var - 1.0 - logvar, dims);
  return 0.5 * torch::sum((mean - o->mean).pow(2) / o->var + var / o->var - 1.0 - logvar + o->logvar, dims);
}

torch::Tensor DiagonalGaussianDistribution::nll(const torch::Tensor& s, std::vector<int64_t> dims) const {
  if (deterministic) return torch::zeros({mean.size(0)}, mean.options());
  const double log2pi = std::log(2.0 * M_PI);
  return 0.5 * torch::sum(log2pi + logvar + (s - mean).pow(2) / var, dims);
}

}  // namespace ldm
