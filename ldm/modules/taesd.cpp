#include "ldm/modules/taesd.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/layers.h"

namespace ldm {

namespace {
// Block(n, n): conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3, plus the
// identity skip, then ReLU (every TAESD block has n_in == n_out == 64).
class Block : public torch::nn::Module {
 public:
  explicit Block(int64_t n) {
    auto seq = register_module("conv", std::make_shared<nn::Holder>());
    for (int i : {0, 2, 4}) {
      convs_.push_back(std::make_shared<nn::Conv>(2, n, n, 3, 1, 1, true));
      seq->add(std::to_string(i), convs_.back());
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(convs_[0]->forward(x));
    h = torch::relu(convs_[1]->forward(h));
    return torch::relu(convs_[2]->forward(h) + x);
  }

 private:
  std::vector<std::shared_ptr<nn::Conv>> convs_;
};
}  // namespace

TaesdNet::TaesdNet(bool decoder, int64_t lc) : decoder_(decoder) {
  int idx = 0;
  auto conv = [&](int64_t in, int64_t out, int64_t stride, bool bias) {
    auto c = register_module(std::to_string(idx++), std::make_shared<nn::Conv>(2, in, out, 3, stride, 1, bias));
    layers_.push_back([c](const torch::Tensor& x) { return c->forward(x); });
  };
  auto block = [&] {
    auto b = register_module(std::to_string(idx++), std::make_shared<Block>(64));
    layers_.push_back([b](const torch::Tensor& x) { return b->forward(x); });
  };
  auto fn = [&](std::function<torch::Tensor(const torch::Tensor&)> f) {  // a layer without weights
    layers_.push_back(std::move(f));
    ++idx;
  };
  if (!decoder) {
    conv(3, 64, 1, true);
    block();
    for (int level = 0; level < 3; ++level) {
      conv(64, 64, 2, false);
      block();
      block();
      block();
    }
    conv(64, lc, 1, true);
    return;
  }
  fn([](const torch::Tensor& x) { return torch::tanh(x / 3) * 3; });  // Clamp
  conv(lc, 64, 1, true);
  fn([](const torch::Tensor& x) { return torch::relu(x); });
  for (int level = 0; level < 3; ++level) {
    block();
    block();
    block();
    fn([](const torch::Tensor& x) {
      return torch::nn::functional::interpolate(
          x, torch::nn::functional::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(torch::kNearest));
    });
    conv(64, 64, 1, false);
  }
  block();
  conv(64, 3, 1, true);
}

torch::Tensor TaesdNet::forward(const torch::Tensor& x) {
  auto h = x;
  for (auto& f : layers_) h = f(h);
  return h;
}

std::shared_ptr<TaesdNet> load_taesd(const std::string& file, bool decoder) {
  auto w = io::load_weights(file).tensors;
  const std::string part = decoder ? "decoder.layers." : "encoder.layers.";
  const bool diffusers = std::any_of(w.begin(), w.end(), [](const auto& kv) {
    return kv.first.rfind("decoder.layers.", 0) == 0 || kv.first.rfind("encoder.layers.", 0) == 0;
  });
  if (diffusers) {  // AutoencoderTiny: decoder indices are one less (its Clamp has no module)
    std::map<std::string, torch::Tensor> mine;
    for (const auto& [k, t] : w) {
      if (k.rfind(part, 0) != 0) continue;
      const auto rest = k.substr(part.size());
      const auto dot = rest.find('.');
      const int64_t i = std::stoll(rest.substr(0, dot)) + (decoder ? 1 : 0);
      mine[std::to_string(i) + rest.substr(dot)] = t;
    }
    if (mine.empty()) throw Error(file + ": an AutoencoderTiny file without the " + (decoder ? "decoder" : "encoder"));
    w = std::move(mine);
  }
  const int64_t lc = w.count(decoder ? "1.weight" : "14.weight") ? w.at(decoder ? "1.weight" : "14.weight").size(decoder ? 1 : 0) : 4;
  auto net = std::make_shared<TaesdNet>(decoder, lc);
  load_state_dict(*net, w, true, file);
  net->eval();
  return net;
}

}  // namespace ldm
