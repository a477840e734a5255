// Tiled first-stage passes: the VAE decoder (or encoder) run over
// overlapping tiles whose overlaps are blended linearly, so images larger
// than memory allows for one pass still decode (stable-diffusion.cpp's
// --vae-tiling). Memory is bounded by one tile; the seams are feathered.
#pragma once
#include <torch/types.h>

#include <functional>

namespace ldm {

struct TileOptions {
  int64_t tile = 0;     // tile side in input units; 0 = no tiling
  int64_t overlap = 0;  // overlap of neighbouring tiles in input units (< tile)
  int64_t align = 1;    // tile starts are multiples of this (the encoder's factor)
};

// fn maps [N, C, h, w] to [N, C', h*s, w*s] with the same s for every tile
// (s = 8 for SD's decoder, 1/8 for its encoder). Without tiling, or when x
// fits one tile, returns fn(x).
torch::Tensor tiled_apply(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& x,
                          const TileOptions& o);

}  // namespace ldm
