#include "ldm/modules/losses/lpips.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/state_dict.h"

namespace ldm {

LPIPS::LPIPS() {
  auto sl = register_module("scaling_layer", std::make_shared<nn::Holder>());
  shift_ = sl->register_buffer("shift", torch::tensor({-.030f, -.088f, -.188f}).view({1, 3, 1, 1}));
  scale_ = sl->register_buffer("scale", torch::tensor({.458f, .448f, .450f}).view({1, 3, 1, 1}));
  // torchvision vgg16.features indices: convs at 0,2 | 5,7 | 10,12,14 | 17,19,21 | 24,26,28
  const std::vector<std::vector<int>> idx = {{0, 2}, {5, 7}, {10, 12, 14}, {17, 19, 21}, {24, 26, 28}};
  const std::vector<int64_t> chns = {64, 128, 256, 512, 512};
  auto net = register_module("net", std::make_shared<nn::Holder>());
  int64_t in = 3;
  for (size_t s = 0; s < idx.size(); ++s) {
    auto slice = std::make_shared<nn::Holder>();
    slices_.emplace_back();
    for (int i : idx[s]) {
      auto c = std::make_shared<nn::Conv>(2, in, chns[s], 3, 1, 1);
      slice->add(std::to_string(i), c);
      slices_.back().push_back(c);
      in = chns[s];
    }
    net->add("slice" + std::to_string(s + 1), slice);
    auto lin = std::make_shared<nn::Holder>();
    auto model = std::make_shared<nn::Holder>();
    lins_.push_back(std::make_shared<nn::Conv>(2, chns[s], 1, 1, 1, 0, false));
    model->add("1", lins_.back());  // model.0 is a parameter-free Dropout
    lin->add("model", model);
    register_module("lin" + std::to_string(s), lin);
  }
}

std::shared_ptr<LPIPS> LPIPS::from_file(const std::string& path) {
  std::shared_ptr<LPIPS> m;
  {
    nn::InitScope empty(nn::Init::Empty);
    m = std::make_shared<LPIPS>();
  }
  auto w = io::load_weights(path).tensors;
  for (const char* prefix : {"loss.perceptual_loss.", "perceptual_loss."}) {
    auto s = strip_prefix(w, prefix);
    if (!s.empty()) {
      w = s;
      break;
    }
  }
  if (!w.count("scaling_layer.shift")) {  // the constants, when the file has only the networks
    w["scaling_layer.shift"] = torch::tensor({-.030f, -.088f, -.188f}).view({1, 3, 1, 1});
    w["scaling_layer.scale"] = torch::tensor({.458f, .448f, .450f}).view({1, 3, 1, 1});
  }
  load_state_dict(*m, w, true, path);
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  m->eval();
  return m;
}

std::vector<torch::Tensor> LPIPS::features(const torch::Tensor& x_in) {
  auto x = x_in.size(1) == 1 ? x_in.repeat({1, 3, 1, 1}) : x_in;  // grayscale as RGB
  x = (x - shift_) / scale_;
  std::vector<torch::Tensor> out;
  for (size_t s = 0; s < slices_.size(); ++s) {
    if (s > 0) x = torch::max_pool2d(x, 2, 2);
    for (auto& c : slices_[s]) x = torch::relu(c->forward(x));
    out.push_back(x);
  }
  return out;
}

torch::Tensor LPIPS::forward(const torch::Tensor& a, const torch::Tensor& b) {
  auto fa = features(a), fb = features(b);
  torch::Tensor val;
  for (size_t k = 0; k < fa.size(); ++k) {
    auto na = fa[k] / (fa[k].pow(2).sum(1, true).sqrt() + 1e-10);
    auto nb = fb[k] / (fb[k].pow(2).sum(1, true).sqrt() + 1e-10);
    auto r = lins_[k]->forward((na - nb).pow(2)).mean({2, 3}, true);
    val = val.defined() ? val + r : r;
  }
  return val;
}

}  // namespace ldm
