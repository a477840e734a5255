// distributions.DiagonalGaussianDistribution: the VAE posterior.
#pragma once
#include <torch/types.h>

#include <optional>
#include <vector>

namespace ldm {

class DiagonalGaussianDistribution {
 public:
  // parameters [N, 2C, ...] = (mean, logvar) along dim 1; logvar clamped to [-30, 20].
  explicit DiagonalGaussianDistribution(const torch::Tensor& parameters, bool deterministic = false);
  torch::Tensor sample(std::optional<torch::Generator> gen = std::nullopt) const;
  torch::Tensor mode() const { return mean; }
  // KL to N(0, I) (or to `other`), summed over all but the batch dim.
  torch::Tensor kl(const DiagonalGaussianDistribution* other = nullptr) const;
  torch::Tensor nll(const torch::Tensor& sample, std::vector<int64_t> dims = {1, 2, 3}) const;
  torch::Tensor parameters, mean, logvar, std, var;
  bool deterministic;
};

}  // namespace ldm
