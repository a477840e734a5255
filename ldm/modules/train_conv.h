// Training convolutions (autograd) through oneDNN primitives built once per
// shape, forward, backward-data and backward-weights.
//
// Why: libtorch 1.13's mkldnn path creates its primitive descriptors and
// reorders the weights on every call, in each direction. At the fashion
// UNet's shapes (32-128 channels, 4x4-16x16 maps, 64 samples a rank, one
// thread) that cost 0.5 ms a forward and 0.5-1.9 ms a backward beyond the
// kernels' own 0.3-5 ms. Here the descriptors are cached per layer and input
// shape; the float32 weights go to the kernels' layout and dtype in one
// reorder, and their gradient comes back as float32 in the parameter's own
// layout (no autocast cast, no ToCopyBackward, no channels-last copies).
#pragma once
#include <torch/types.h>

#include <memory>
#include <vector>

namespace ldm::nn {

struct TrainConvCache;

// conv2d(x, w, b) with groups 1 and dilation 1 where the gradient is needed,
// x is a CPU map stored channels-last (nn::compute_layout) and w is float32:
// computed in bfloat16 under CPU bf16 autocast (as libtorch's conv would),
// else in x's dtype (float32). Returns an undefined tensor where this does
// not apply, or where oneDNN has no kernel: the caller then runs libtorch's
// conv. Off with LDM_CONV=aten (nn::set_fast_conv), for A/B comparisons.
torch::Tensor train_conv2d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                           const std::vector<int64_t>& stride, int64_t padding,
                           std::shared_ptr<TrainConvCache>& cache);

}  // namespace ldm::nn
