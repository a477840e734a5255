// What one generation asks for and what it returns. Every front end (CLI, C
// API, server, trainer image log) fills a GenerateRequest and reads a
// GenerateResult; validate() is the one place their values are checked.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace ldm::pipeline {

// A LoRA merged for one request (request.loras, --lora FILE:MULT, <lora:...> tags).
struct LoraSpec {
  std::string file;
  double te = 1.0, unet = 1.0;  // multipliers of the text-encoder and UNet deltas
};

struct GenerateRequest {
  // Conditioning, one of: a prompt (text cond stages), class labels (one, or
  // one per image), raw tensors (cond/uncond, routed by conditioning_key), or
  // nothing for an unconditional model.
  std::string prompt, negative_prompt;
  std::vector<std::string> prompts;  // one per image, instead of `prompt`
  std::vector<int64_t> class_labels;
  torch::Tensor cond, uncond;
  int64_t width = 0, height = 0;  // pixels; 0: the model's own size
  int64_t batch = 1;
  int64_t seed = 42;  // -1: a random seed (recorded in the result)
  std::string sampler = "euler_a", schedule = "discrete", discretize = "uniform";
  int64_t steps = 20;
  double eta = 0.0, cfg_scale = 7.0;
  // guide only at noise levels cfg_sigma_lo < sigma <= cfg_sigma_hi (the
  // conditional model alone elsewhere); the default guides every step
  double cfg_sigma_lo = 0.0, cfg_sigma_hi = std::numeric_limits<double>::infinity();
  // guidance rescale in [0, 1] (diffusers' guidance_rescale; 0: off)
  double cfg_rescale = 0.0;
  // text models: the text encoder's state after the k-th block from the end
  // (A1111's Clip skip: 1 the last, 2 the penultimate); 0: the model's own
  int64_t clip_skip = 0;
  // img2img: [C, H, W] float in [0, 1] (resized to the output size), or
  // [N, C, H, W] with one image per output image; strength 1 ignores it
  torch::Tensor init_image;
  // an init image of another size: false stretches it to the output size in
  // pixels; true encodes it at its own size (to whole latents) and stretches
  // its latents bilinearly (A1111's img2img resize_mode 3, "latent upscale")
  bool init_resize_latent = false;
  double strength = 0.75;
  // img2img from latents instead of an image: [1 or N, C, h, w] in the UNet's
  // scale (a result's `latents`, resized: the hires fix) for the output size
  torch::Tensor init_latents;
  // inpainting: [1, H, W] float in [0, 1], white (>= 0.5) = repaint; needs init_image
  torch::Tensor mask;
  torch::Tensor init_noise;  // x_T [N, C, h, w] instead of drawing it from the seed
  // merged for this request and restored after it; <lora:name:mult> tags in
  // the prompt add to these (resolved in LoadOptions::lora_dir)
  std::vector<LoraSpec> loras;
  bool decode = true;        // false: latents only
};

// After each sampler step: 1-based step, total steps, seconds since the
// sampler started, and the current latents and x0 estimate (for previews).
struct ProgressInfo {
  int64_t step = 0, steps = 0;
  double elapsed = 0.0;
  torch::Tensor latents, denoised;
};

struct GenerateCallbacks {
  std::function<void(const ProgressInfo&)> progress;
  std::function<bool()> cancelled;  // polled between steps; true stops the request
};

enum class Status { Ok, Cancelled };

struct Timings {
  double conditioning = 0, sampling = 0, decoding = 0, total = 0;  // seconds
};

struct GenerateResult {
  Status status = Status::Ok;
  std::string message;  // why, when not Ok
  // [N, C, H, W] float in [0, 1] and the same as uint8 [N, H, W, C] (C = 1 or 3);
  // undefined when the request asked for latents only or the model's output is
  // not an image.
  torch::Tensor images, images_u8;
  torch::Tensor latents;        // final latents [N, C, h, w], float32
  std::vector<int64_t> seeds;   // the seed of each image: seed + i
  std::string parameters;       // A1111-style "parameters" text (prompt, then settings) of image 0
  std::vector<std::string> infotexts;  // the same for each image (its own seed)
  std::vector<std::string> notes;  // things the caller may want to show (LoRA modules that matched nothing)
  int64_t model_evaluations = 0;
  Timings timings;
};

}  // namespace ldm::pipeline
