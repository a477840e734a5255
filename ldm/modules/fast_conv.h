// Inference convolutions through oneDNN primitives that are built once per
// shape and keep their weights in the primitive's own layout.
//
// Why: libtorch 1.13's mkldnn path reorders the weights on every call, which
// dominates the UNet's 1280-channel convolutions at 4x4/8x8 (26-75 GFLOP/s
// against 150-200 with packed weights), and it never uses Winograd F(4x4, 3x3),
// 2-3x faster on the 3x3 convolutions of large maps: ours (winograd_conv.h,
// ~1e-5 of the output's range) on every CPU, oneDNN's AVX-512 kernels
// (~1e-6) with LDM_WINO=onednn. Training (autograd) has its own
// primitives (train_conv.h): weights change every step there.
#pragma once
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ldm::nn {

// aten: always libtorch's conv. direct: packed weights, oneDNN direct kernels.
// auto: direct on small maps, and Winograd for 3x3/stride 1 convolutions on maps
// large enough to pay for its transforms; its 4x larger transformed weights are
// kept up to 640x640 channels and made per call beyond (see fast_conv.cpp).
enum class FastConv { Aten, Direct, Auto };
// Per thread, initially from LDM_CONV=aten|direct|auto (default auto); for tests/benchmarks.
// The auto policy's thresholds can be moved for experiments with
// LDM_WINO_MIN_PIXELS, LDM_WINO_MAX_INOUT, LDM_WINO_MIN_CHANNELS,
// LDM_DIRECT_MAX and LDM_WINO=onednn (fast_conv.cpp).
void set_fast_conv(FastConv mode);
FastConv fast_conv();
// Whether oneDNN was found at build time.
bool fast_conv_available();
// A 4-d map stored NHWC (and not also NCHW-contiguous, as 1x1 maps are).
bool stored_nhwc(const torch::Tensor& x);
// True where bf16 convolutions take the packed path too: oneDNN's AMX kernels
// (LDM_DNNL_BF16=0 leaves them to libtorch's conv, which reorders the weights
// on every call).
bool fast_conv_bf16_available();

struct FastConvCache;

// Off in this scope (per thread): the no-grad forward of gradient
// checkpointing, where weights change every step and caching them would
// only hold a stale copy.
class FastConvOff {
 public:
  FastConvOff();
  ~FastConvOff();
  FastConvOff(const FastConvOff&) = delete;
  FastConvOff& operator=(const FastConvOff&) = delete;
};

// 2-D convolution (groups 1, dilation 1, float32, contiguous weights) through
// the cached primitive, or an undefined tensor where the fast path does not
// apply (grad needed, autocast, other dtypes, oneDNN refuses the shape): then
// the caller runs libtorch's conv. `cache` belongs to the calling layer and is
// rebuilt when the weight changes (data pointer or version counter).
torch::Tensor fast_conv2d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          const std::vector<int64_t>& stride, int64_t padding,
                          std::shared_ptr<FastConvCache>& cache);

// Called (on this thread) with each weight right after its packed copy is
// made. A one-shot pipeline gives the plain weight's file-mapped pages back
// here (io::release_pages): the packed copy replaces them, and a later read
// faults them in from the file. It returns true where it dropped the plain
// values for good (bf16 weights converted at load: io::drop_pages; only bf16,
// which no Winograd layer holds); the cache then packs any further shape from
// its packed copy, and writes it back into the weight before libtorch's conv
// would read it.
// Per thread: a pipeline sets it for the duration of its request
// (PackedHookScope), never for the process.
using PackedHook = std::function<bool(const torch::Tensor&)>;
void set_fast_conv_packed_hook(PackedHook hook);
class PackedHookScope {
 public:
  explicit PackedHookScope(PackedHook hook) { set_fast_conv_packed_hook(std::move(hook)); }
  ~PackedHookScope() { set_fast_conv_packed_hook(nullptr); }
  PackedHookScope(const PackedHookScope&) = delete;
  PackedHookScope& operator=(const PackedHookScope&) = delete;
};

// Bytes held by a cache's packed weights (0 for none).
size_t fast_conv_cache_bytes(const std::shared_ptr<FastConvCache>& cache);

}  // namespace ldm::nn
