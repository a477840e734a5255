#include "ldm/pipeline/conditioning.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/modules/encoders/clip_text.h"

namespace ldm::pipeline {

namespace {
std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// [N, C, H, W] in [-1, 1] at h x w from [C, H, W] (N = 1) or [N, C, H, W] in [0, 1], resized as torchvision does.
torch::Tensor model_range(const torch::Tensor& img, int64_t h, int64_t w) {
  auto x = img.to(torch::kFloat32);
  if (x.dim() == 3) x = x.unsqueeze(0);
  if (x.size(2) != h || x.size(3) != w)
    x = torch::nn::functional::interpolate(
        x, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kBilinear)
               .align_corners(false).antialias(true));
  return x.clamp(0, 1) * 2 - 1;
}

// 1 -> 3 channels by repetition, 3 -> 1 by luminance (ITU-R 601, as image decoders do).
// [N, C, H, W] from [C, H, W] or [N, C, H, W].
torch::Tensor with_channels(const torch::Tensor& image, int64_t c) {
  const auto img = image.dim() == 3 ? image.unsqueeze(0) : image;
  if (img.size(1) == c) return img;
  if (c == 3) return img.expand({img.size(0), 3, img.size(2), img.size(3)});
  return (img.select(1, 0) * 0.299 + img.select(1, 1) * 0.587 + img.select(1, 2) * 0.114).unsqueeze(1);
}
}  // namespace

Conditioning condition(LatentDiffusion& m, const GenerateRequest& r, int64_t n, bool guided) {
  Conditioning c;
  auto te = std::dynamic_pointer_cast<TextEncoder>(m.cond_stage());
  if (te && !r.cond.defined() && r.class_labels.empty()) {
    // prompts and negative prompt in the same number of 75-token windows (one batch for guidance)
    auto prompts = r.prompts.empty() ? std::vector<std::string>(n, r.prompt) : r.prompts;
    size_t k = te->windows(r.negative_prompt);
    for (const auto& p : prompts) k = std::max(k, te->windows(p));
    c.cond = m.make_cond(m.text_conditioning(prompts, k));
    if (guided && !r.uncond.defined())
      c.uncond = m.make_cond(m.text_conditioning(std::vector<std::string>(n, r.negative_prompt), k));
    c.prompt_text = prompts.front();
    if (!r.negative_prompt.empty()) c.prompt_text += "\nNegative prompt: " + r.negative_prompt;
  } else if (r.cond.defined()) {
    c.cond = m.make_cond(r.cond.to(torch::kFloat32));
    c.prompt_text = "cond tensor " + c10::str(r.cond.sizes());
  } else if (!r.class_labels.empty()) {
    auto labels = r.class_labels.size() == 1 ? std::vector<int64_t>(n, r.class_labels[0]) : r.class_labels;
    c.cond = m.make_cond(m.get_learned_conditioning(torch::tensor(labels, torch::kInt64)));
    if (guided && !r.uncond.defined()) c.uncond = m.make_cond(m.unconditional_conditioning(n));
    c.prompt_text = "class " + join(r.class_labels);
  }
  if (r.uncond.defined()) c.uncond = m.make_cond(r.uncond.to(torch::kFloat32));
  const bool have_uncond = c.uncond.crossattn.defined() || c.uncond.y.defined() || c.uncond.concat.defined();
  if (guided && !have_uncond)
    throw Error("cfg scale: guidance needs an unconditional side (a prompt, class labels with a ClassEmbedder, or an "
                "uncond tensor); use cfg scale 1 for none");
  return c;
}

ImageStart prepare_image(LatentDiffusion& m, const GenerateRequest& r, const torch::Tensor& noise, Conditioning& c,
                         const std::vector<torch::Generator>& gens, Encode encode) {
  if (!encode) encode = [&m](const torch::Tensor& x, torch::Generator g) { return m.encode_first_stage(x, g); };
  auto encode_rows = [&](const torch::Tensor& x) {  // each image's posterior sample from its own generator
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < x.size(0); ++i) rows.push_back(encode(x.slice(0, i, i + 1), gens.at(i)).to(torch::kFloat32));
    return torch::cat(rows);
  };
  ImageStart s;
  const int64_t f = m.first_stage() ? m.first_stage()->downsample_factor() : 1;
  const int64_t n = noise.size(0), H = noise.size(2) * f, W = noise.size(3) * f;
  const int64_t ic = m.first_stage() ? m.first_stage()->image_channels() : 0;
  const int64_t ch = ic ? ic : noise.size(1);
  const bool nine = m.options().conditioning_key == "hybrid" && m.unet()->options().in_channels == 2 * noise.size(1) + 1;
  if (!r.init_image.defined()) {
    if (nine) {  // txt2img on an inpainting UNet: all masked, a grey image (as A1111)
      auto grey = torch::zeros({n, ch, H, W}, noise.options());
      c.cond.concat = torch::cat({torch::ones({n, 1, noise.size(2), noise.size(3)}, noise.options()),
                                  encode_rows(grey)}, 1);
      if (c.uncond.crossattn.defined()) c.uncond.concat = c.cond.concat;
    }
    if (r.init_latents.defined()) s.x0 = r.init_latents.to(noise.device(), torch::kFloat32).expand_as(noise).contiguous();
    return s;
  }
  auto img = model_range(with_channels(r.init_image, ch), H, W).expand({n, ch, H, W}).contiguous();
  const auto dev = noise.device();
  img = img.to(dev);
  const int64_t ih = r.init_image.size(-2), iw = r.init_image.size(-1);
  if (r.init_resize_latent && (ih != H || iw != W)) {
    const int64_t lh = std::max<int64_t>(1, (ih + f / 2) / f), lw = std::max<int64_t>(1, (iw + f / 2) / f);
    auto own = model_range(with_channels(r.init_image, ch), lh * f, lw * f).expand({n, ch, lh * f, lw * f});
    s.x0 = torch::nn::functional::interpolate(
        encode_rows(own.contiguous().to(dev)),
        torch::nn::functional::InterpolateFuncOptions()
            .size(std::vector<int64_t>{noise.size(2), noise.size(3)})
            .mode(torch::kBilinear)
            .align_corners(false));
  } else {
    s.x0 = encode_rows(img);
  }
  if (!r.mask.defined()) return s;
  auto mask_px = (model_range(r.mask, H, W) + 1) / 2;  // 1 = repaint
  mask_px = (mask_px >= 0.5).to(torch::kFloat32).expand({n, 1, H, W}).to(dev);
  auto mask_lat = torch::nn::functional::interpolate(
      mask_px, torch::nn::functional::InterpolateFuncOptions()
                   .size(std::vector<int64_t>{noise.size(2), noise.size(3)})
                   .mode(torch::kNearest));
  if (nine) {
    // the 9-channel inpainting UNet: [x, mask, masked-image latents], as SD inpainting checkpoints
    auto masked = encode_rows(img * (1 - mask_px));
    c.cond.concat = torch::cat({mask_lat, masked}, 1);
    if (c.uncond.crossattn.defined()) c.uncond.concat = c.cond.concat;
  }
  // every model keeps the image's latents outside the mask (A1111 and
  // stable-diffusion.cpp blend inpainting models' latents too)
  s.keep = 1 - mask_lat;  // samplers keep x0 where keep == 1
  return s;
}

}  // namespace ldm::pipeline
