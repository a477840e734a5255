// The basic layers, with the reference's parameter names (weight, bias) and
// PyTorch's default initialisation, plus control over how parameters are
// created: random (training from scratch), empty (weights will be loaded),
// or on the meta device (count parameters without allocating them).
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace ldm::nn {

enum class Init { Random, Empty, Meta };
Init init_mode();
// Sets the parameter creation mode for modules built in this scope (per thread).
class InitScope {
 public:
  explicit InitScope(Init m);
  ~InitScope();

 private:
  Init prev_;
};

// A parameter of `shape`: uniform(-bound, bound) in Random mode.
torch::Tensor make_param(const std::vector<int64_t>& shape, double bound);
torch::Tensor make_const(const std::vector<int64_t>& shape, double value);
torch::Tensor make_normal(const std::vector<int64_t>& shape);

// A plain named container, the C++ twin of nn.Sequential/nn.Module used only
// to give children their reference names ("in_layers.0", "down.1.block.0").
class Holder : public torch::nn::Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, m);
  }
};

// Multiply-add FLOPs of every Conv::forward while a counter is set (benchmarks:
// libtorch's profiler counts matmuls but not convolutions). nullptr = off.
void set_conv_flop_counter(std::atomic<double>* counter);

struct FastConvCache;  // fast_conv.h
struct TrainConvCache;  // train_conv.h

// A low-rank adapter beside a Linear or Conv (LoRA, Hu et al. 2021; LoCon for
// k x k convs): the layer's output gains scale x up(down(x)), scale = alpha /
// rank. down [rank, in(, k, k)] starts uniform(+-1/sqrt(fan_in)), up
// [out, rank(, 1, 1)] at zero, so training starts from the base model. Not a
// child of its layer: the base checkpoint keys stay as they are; the LoRA
// trainer owns and saves it.
class LoraAdapter : public torch::nn::Module {
 public:
  // kernel 0: linear; otherwise a conv with that kernel, stride and padding.
  LoraAdapter(int64_t in, int64_t out, int64_t rank, double alpha, int64_t kernel = 0, std::vector<int64_t> stride = {1, 1},
              int64_t padding = 0);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor down, up;
  int64_t rank;
  double alpha;

 private:
  int64_t kernel_, padding_;
  std::vector<int64_t> stride_;
};

// conv_nd: 1, 2 or 3 spatial dims; weight [out, in, k...], bias [out].
class Conv : public torch::nn::Module {
 public:
  Conv(int dims, int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0, bool bias = true);
  // dims==3 Downsample uses stride (1,2,2)
  Conv(int dims, int64_t in, int64_t out, int64_t kernel, std::vector<int64_t> stride, int64_t padding, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  // A 2-d 1x1 conv beside a change of layout, in one oneDNN matmul where
  // fast_conv1x1_to_tokens / fast_tokens_to_conv1x1 apply (no LoRA adapter):
  // forward(x) as tokens [B, H*W, out]; forward(h as [B, in, H, W] in
  // `layout`) + residual for tokens h [B, H*W, in].
  torch::Tensor forward_to_tokens(const torch::Tensor& x);
  torch::Tensor forward_from_tokens(const torch::Tensor& h, const torch::Tensor& residual, c10::MemoryFormat layout);
  void zero_();  // zero_module() of the reference
  torch::Tensor weight, bias;
  int dims;
  std::vector<int64_t> stride;
  int64_t padding;
  // inference: the oneDNN primitive and packed weights of fast_conv2d
  std::shared_ptr<FastConvCache> fast;
  // training: the cached oneDNN primitives of train_conv2d
  std::shared_ptr<TrainConvCache> train;
  std::shared_ptr<LoraAdapter> lora;  // set while a LoRA trains

 private:
  bool is_plain_1x1() const;  // 2-d, 1x1, stride 1, no padding, no adapter
};

// m's parameters and those of the LoRA adapters on its Linear/Conv layers
// (what gradient checkpointing must differentiate with respect to).
std::vector<torch::Tensor> parameters_with_adapters(torch::nn::Module& m);

// Drops the inference caches (packed conv weights) of every Conv in `m`: after
// sampling inside a training run, where the weights change next step anyway.
void release_fast_conv(torch::nn::Module& m);

class Linear : public torch::nn::Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  // forward(x) + residual, the sum inside oneDNN's matmul where fast_linear applies
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual);
  void zero_();
  torch::Tensor weight, bias;
  std::shared_ptr<LoraAdapter> lora;  // set while a LoRA trains
};

// GroupNorm computed in float32 whatever the input dtype (GroupNorm32).
class GroupNorm : public torch::nn::Module {
 public:
  GroupNorm(int64_t groups, int64_t channels, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  // silu(forward(x)), the SiLU applied before a reduced-precision input is
  // cast back (torch 1.13's bf16 SiLU runs at a third of its float32 speed)
  torch::Tensor forward_silu(const torch::Tensor& x);
  // silu(forward(x) * (1 + scale) + shift): the reference ResBlock's
  // use_scale_shift_norm, in one pass where the fused kernel applies
  torch::Tensor forward_scale_shift_silu(const torch::Tensor& x, const torch::Tensor& scale,
                                         const torch::Tensor& shift);
  torch::Tensor weight, bias;
  int64_t groups;
  double eps;

 private:
  torch::Tensor norm(const torch::Tensor& x, bool silu);
};

// x in the layout a network keeps its maps in: channels-last for CPU training
// (grad mode) of 4-d float32/bf16 maps where the fused GroupNorm runs, and for
// bf16 inference where the convolutions run on oneDNN's AMX kernels
// (fast_conv_bf16_available); x as is otherwise. oneDNN's convolutions then
// skip the reorders around NCHW (a fifth of the fashion UNet's convolution
// time in training); norms and attention follow. Networks hand their output
// back in their input's layout.
torch::Tensor compute_layout(const torch::Tensor& x);
// compute_layout of x in the dtype the network computes in: a float32 input
// to bf16 weights at inference where the convolutions run on AMX becomes bf16
// here, once (autocast would cast it in the first conv, which then stays on
// libtorch's path, and the maps would stay NCHW).
torch::Tensor compute_layout(const torch::Tensor& x, const torch::Tensor& weight);

class LayerNorm : public torch::nn::Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;
  int64_t dim;
  double eps;
};

class Embedding : public torch::nn::Module {
 public:
  Embedding(int64_t num, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;
};

}  // namespace ldm::nn
