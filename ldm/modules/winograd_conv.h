// 3x3, stride 1, padding 1 convolutions by Winograd's minimal filtering
// F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016): 36 multiplications per 4x4 output tile and channel pair
// instead of 144, the rest in cheap transforms. oneDNN 2.x has Winograd
// kernels for AVX-512 only; this one runs its transforms in plain loops and
// its 36 channel products through libtorch's batched GEMM, so it works on any
// CPU. Inference only (no autograd); results agree with the direct
// convolution to ~1e-5 of the output's range (the transforms' rounding).
#pragma once
#include <torch/types.h>

#include <memory>

namespace ldm::nn {

// w [Co, Ci, 3, 3] float32 -> the transformed weights G w G^T, [36, Ci, Co].
torch::Tensor winograd_weights(const torch::Tensor& w);

// One layer's convolution. The transformed weights (4x the plain ones) are
// made per call on the first call and kept from the second on; the 36
// products run through oneDNN's matmul where the build has it, libtorch's bmm
// otherwise. With keep false they are never kept: each call transforms them
// in blocks of output channels of about 2 x chunk_bytes (for layers whose 4x
// weights would cost more memory than they are worth keeping).
class WinogradConv3x3 {
 public:
  // Keeps a reference to w until it caches. The tiles of a call are done in
  // chunks whose transformed input/products take about chunk_bytes each
  // (256 tiles at least).
  explicit WinogradConv3x3(torch::Tensor w, int64_t chunk_bytes = 8 << 20, bool keep = true);
  ~WinogradConv3x3();
  WinogradConv3x3(const WinogradConv3x3&) = delete;
  WinogradConv3x3& operator=(const WinogradConv3x3&) = delete;

  // conv2d(x, w, bias, stride 1, padding 1) for x [N, Ci, H, W] float32;
  // bias may be undefined. Not reentrant: the caller serialises calls.
  torch::Tensor operator()(const torch::Tensor& x, const torch::Tensor& bias);
  bool cached() const;  // the transformed weights are kept (w no longer read)
  size_t bytes() const;  // held by the kept weights

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ldm::nn
