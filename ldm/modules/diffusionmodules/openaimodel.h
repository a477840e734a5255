// openaimodel.UNetModel (CompVis and Stability-AI versions) and its blocks,
// registered under the reference names so checkpoint keys match.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ldm/modules/layers.h"

namespace ldm {
class Params;
class SpatialTransformer;

struct UNetOptions {
  int64_t image_size = 32;  // informational (the UNet is size-agnostic)
  int64_t in_channels = 4, model_channels = 320, out_channels = 4;
  std::vector<int> num_res_blocks{2};  // one value, or one per level
  std::vector<int> attention_resolutions{4, 2, 1};
  double dropout = 0.0;
  std::vector<int> channel_mult{1, 2, 4, 8};
  bool conv_resample = true;
  int dims = 2;
  int64_t num_classes = 0;           // 0: none
  std::string num_classes_mode;      // "" (int), "continuous" or "sequential" (SD2)
  int64_t adm_in_channels = 0;
  bool use_checkpoint = false, use_fp16 = false;
  int64_t num_heads = -1, num_head_channels = -1, num_heads_upsample = -1;
  bool use_scale_shift_norm = false, resblock_updown = false, use_new_attention_order = false;
  bool use_spatial_transformer = false;
  int64_t transformer_depth = 1;
  std::vector<int64_t> context_dim;  // empty: none
  int64_t n_embed = 0;               // >0: predict codebook ids
  bool legacy = true;
  std::vector<bool> disable_self_attentions;  // per level (SD2)
  std::vector<int> num_attention_blocks;      // per level (SD2)
  bool disable_middle_self_attn = false, use_linear_in_transformer = false;

  static UNetOptions from_params(const Params& p);  // reference defaults, strict keys
};

// A child of TimestepEmbedSequential: the module plus how to call it.
using BlockFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& emb, const torch::Tensor& ctx)>;

class TimestepEmbedSequential : public torch::nn::Module {
 public:
  template <class M>
  std::shared_ptr<M> add(std::shared_ptr<M> m, BlockFn fn) {
    fns_.push_back(std::move(fn));
    return register_module(std::to_string(fns_.size() - 1), m);
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb, const torch::Tensor& ctx);

 private:
  std::vector<BlockFn> fns_;
};

class Upsample : public torch::nn::Module {
 public:
  Upsample(int64_t channels, bool use_conv, int dims, int64_t out_channels, int64_t padding = 1);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<nn::Conv> conv;
  int dims;
};

class Downsample : public torch::nn::Module {
 public:
  Downsample(int64_t channels, bool use_conv, int dims, int64_t out_channels, int64_t padding = 1);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<nn::Conv> op;
  int dims;
};

class ResBlock : public torch::nn::Module {
 public:
  ResBlock(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels, bool use_conv,
           bool use_scale_shift_norm, int dims, bool use_checkpoint, bool up, bool down);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);
  std::shared_ptr<nn::GroupNorm> in_norm, out_norm;
  std::shared_ptr<nn::Conv> in_conv, out_conv, skip_conv;
  std::shared_ptr<nn::Linear> emb_linear;
  std::shared_ptr<Upsample> h_up, x_up;
  std::shared_ptr<Downsample> h_down, x_down;
  double dropout;
  bool scale_shift, use_checkpoint;

 private:
  torch::Tensor body(const torch::Tensor& x, const torch::Tensor& emb);
};

class AttentionBlock : public torch::nn::Module {
 public:
  AttentionBlock(int64_t channels, int64_t num_heads, int64_t num_head_channels, bool use_checkpoint,
                 bool use_new_attention_order);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<nn::GroupNorm> norm;
  std::shared_ptr<nn::Conv> qkv, proj_out;
  int64_t num_heads;
  bool use_checkpoint, new_order;
};

class UNetModel : public torch::nn::Module {
 public:
  explicit UNetModel(UNetOptions o);
  // x [N,C,...], timesteps [N], context [N,L,D] (crossattn), y [N] labels or [N,adm] vectors.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timesteps, const torch::Tensor& context = {},
                        const torch::Tensor& y = {});
  const UNetOptions& options() const { return o_; }

 private:
  UNetOptions o_;
  std::shared_ptr<nn::Linear> time_embed0, time_embed2;
  std::shared_ptr<nn::Embedding> label_emb;
  std::shared_ptr<nn::Linear> label_lin0, label_lin2;  // continuous (0 only) / sequential
  std::vector<std::shared_ptr<TimestepEmbedSequential>> input_blocks, output_blocks;
  std::shared_ptr<TimestepEmbedSequential> middle_block;
  std::shared_ptr<nn::GroupNorm> out_norm, id_norm;
  std::shared_ptr<nn::Conv> out_conv, id_conv;
};

}  // namespace ldm
