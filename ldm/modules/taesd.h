// TAESD (madebyollin/taesd's taesd.py): a ~1.2 M-parameter distilled
// autoencoder for SD latents, for live previews and fast decoding. Registered
// names are taesd.py's Sequential indices (`3.conv.0.weight`), so its
// published .pth/.safetensors files load as they are; diffusers'
// AutoencoderTiny layout (`decoder.layers.N`) is renamed on load.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ldm {

class TaesdNet : public torch::nn::Module {
 public:
  // encoder: [N, 3, H, W] in [0, 1] -> latents [N, C, H/8, W/8] (the UNet's scale);
  // decoder: latents -> [N, 3, H, W], about [0, 1] (not clamped here).
  TaesdNet(bool decoder, int64_t latent_channels = 4);
  torch::Tensor forward(const torch::Tensor& x);
  bool is_decoder() const { return decoder_; }

 private:
  bool decoder_;
  std::vector<std::function<torch::Tensor(const torch::Tensor&)>> layers_;
};

// One part ("encoder" or "decoder") from a file in either layout: taesd.py's
// (taesd_decoder.pth, .safetensors) or diffusers' AutoencoderTiny (both parts
// in one file). Strict: missing or extra keys are an error naming the file.
std::shared_ptr<TaesdNet> load_taesd(const std::string& file, bool decoder);

}  // namespace ldm
