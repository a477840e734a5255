// encoders.modules: conditioning encoders. ClassEmbedder maps class labels
// to one cross-attention token; its last class doubles as "unconditional"
// when trained with label dropout (the Stability-AI version's ucg_rate).
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>

#include "ldm/modules/layers.h"

namespace ldm {
class Params;

class ClassEmbedder : public torch::nn::Module {
 public:
  ClassEmbedder(int64_t embed_dim, int64_t n_classes = 1000, std::string key = "class", double ucg_rate = 0.0);
  static std::shared_ptr<ClassEmbedder> from_params(const Params& p);
  // labels [N] int64 -> [N, 1, embed_dim]. In training mode each label is
  // replaced by the unconditional class with probability ucg_rate.
  torch::Tensor forward(const torch::Tensor& labels, const std::optional<torch::Generator>& gen = std::nullopt);
  // The same with the dropout decided by the caller: drop [N] bool -> null class.
  torch::Tensor embed(const torch::Tensor& labels, const torch::Tensor& drop = {});
  torch::Tensor unconditional(int64_t n, torch::Device device = torch::kCPU);  // [n, 1, embed_dim]
  int64_t n_classes;
  std::string key;
  double ucg_rate;
  std::shared_ptr<nn::Embedding> embedding;
};

}  // namespace ldm
