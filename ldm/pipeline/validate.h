// The one place a GenerateRequest's values are checked, before anything is
// allocated: the CLI, the C API and the server refuse the same bad values
// with the same one-line ldm::Error.
#pragma once
#include <cstdint>
#include <string>

#include "ldm/pipeline/request.h"

namespace ldm::pipeline {

// What validation needs to know about the loaded model.
struct ModelFacts {
  int64_t factor = 1;         // pixels per latent side (the first stage's downsampling)
  int64_t unet_factor = 1;    // the UNet's own downsampling: latent sides must divide by it
  int64_t latent_channels = 4;
  int64_t default_size = 0;   // pixels
  int64_t timesteps = 1000;
  int64_t image_channels = 3;
  int64_t decoder_width = 128;  // channels of the first stage's full-resolution layers (memory estimate)
  std::string conditioning_key;
  bool text = false, classes = false;
  int64_t text_width = 0;     // the text encoder's token width (textual-inversion vectors must match)
  int64_t text_layers = 0;    // its blocks (clip skip goes up to this)
  bool decode_tiled = false;
};

// Largest side accepted, in pixels (A1111 allows 2048; tiled decoding makes more possible).
constexpr int64_t kMaxSide = 8192;

// Images the request makes: the init noise's batch when given, else `batch`.
int64_t image_count(const GenerateRequest& r);
// What output sides must be multiples of: the first stage's factor times the UNet's.
inline int64_t size_multiple(const ModelFacts& m) { return m.factor * m.unet_factor; }
// Output size in pixels (width, height) after defaults.
std::pair<int64_t, int64_t> output_size(const GenerateRequest& r, const ModelFacts& m);
void validate(const GenerateRequest& r, const ModelFacts& m);
// Sampler name, step count and spacing alone (what a training run's previews use).
void validate_sampling(const std::string& sampler, int64_t steps, const std::string& discretize, int64_t timesteps);
// Timesteps the sampler visits for `steps`: ddim/plms with the reference's
// uniform spacing (T // steps) can visit one more than asked.
int64_t visited_timesteps(const std::string& sampler, int64_t steps, const std::string& discretize, int64_t timesteps);
// Bytes the request will need at its peak (latents, guidance batch, decoder
// activations at full resolution), a deliberate over-estimate.
double estimated_bytes(const GenerateRequest& r, const ModelFacts& m);
// Memory the system can give this process now (MemAvailable), bytes.
double available_bytes();

}  // namespace ldm::pipeline
