#include "ldm/modules/encoders/modules.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

ClassEmbedder::ClassEmbedder(int64_t embed_dim, int64_t n, std::string k, double ucg)
    : n_classes(n), key(std::move(k)), ucg_rate(ucg) {
  if (n_classes < 1 || embed_dim < 1) throw Error("ClassEmbedder: n_classes and embed_dim must be positive");
  embedding = register_module("embedding", std::make_shared<nn::Embedding>(n_classes, embed_dim));
}

std::shared_ptr<ClassEmbedder> ClassEmbedder::from_params(const Params& p) {
  auto m = std::make_shared<ClassEmbedder>(p.req<int64_t>("embed_dim"), p.get<int64_t>("n_classes", 1000),
                                           p.get<std::string>("key", "class"), p.get<double>("ucg_rate", 0.0));
  p.check_unused("ldm.modules.encoders.modules.ClassEmbedder");
  return m;
}

torch::Tensor ClassEmbedder::forward(const torch::Tensor& labels, const std::optional<torch::Generator>& gen) {
  torch::Tensor drop;
  if (is_training() && ucg_rate > 0)
    drop = gen ? torch::rand(labels.sizes(), *gen).lt(ucg_rate) : torch::rand(labels.sizes()).lt(ucg_rate);
  return embed(labels, drop);
}

torch::Tensor ClassEmbedder::embed(const torch::Tensor& labels, const torch::Tensor& drop) {
  auto c = labels.to(torch::kInt64);
  if (c.numel() > 0 && (c.min().item<int64_t>() < 0 || c.max().item<int64_t>() >= n_classes))
    throw Error("ClassEmbedder: class labels must be in [0, " + std::to_string(n_classes) + ")");
  if (drop.defined()) c = torch::where(drop.to(c.device()), torch::full_like(c, n_classes - 1), c);
  return embedding->forward(c.unsqueeze(1));
}

torch::Tensor ClassEmbedder::unconditional(int64_t n, torch::Device device) {
  return embedding->forward(torch::full({n, 1}, n_classes - 1, torch::TensorOptions().dtype(torch::kInt64).device(device)));
}

}  // namespace ldm
