// Attention modules of ldm/modules/attention.py with the reference names:
// CrossAttention, FeedForward (GEGLU), BasicTransformerBlock,
// SpatialTransformer (conv or linear projections), LinearAttention,
// SpatialSelfAttention, and the exact memory-efficient attention kernel.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <vector>

#include "ldm/modules/layers.h"

namespace ldm {

// softmax(q k^T * scale) v for q [B, N, d], k/v [B, M, d]. Fused
// scaled_dot_product_attention on torch >= 2. On torch 1.x inference: our
// fused kernel (attention_fused) where it applies, else chunked over queries
// so the score matrix stays under a fixed budget; training: the plain path.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale);
// Plain one-shot path (reference behaviour), for tests and comparison.
torch::Tensor attention_plain(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale);
// Query rows in chunks under the thread's score budget (no autograd).
torch::Tensor attention_chunked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale);
// The fused tiled kernel with an online softmax, no score matrix (no
// autograd): CPU tensors with d % 8 == 0, fp32 on an AVX2/FMA machine or
// bf16 on an AVX512-BF16 one (bf16 products, float32 softmax and sums).
// Runs the widest kernel the CPU has (AVX-512 for fp32, AMX tiles for bf16)
// unless widest is false: AVX2 and AVX512-BF16 (the tests compare the two).
bool attention_fused_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
torch::Tensor attention_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                              bool widest = true);
// attention() over h heads side by side in the last dimension: q [B, N, h*d],
// k and v [B, M, h*d] -> [B, N, h*d], as merging the heads of attention() on
// the split ones. Where the fused kernel runs, it reads and writes the heads
// in place: no split or merge copies.
torch::Tensor attention_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads,
                              double scale);
// Budget of score-matrix elements per chunk (default 32M floats = 128 MB),
// per thread: a pipeline sets its own for the duration of a request.
constexpr int64_t kDefaultAttentionChunkElements = 32ll << 20;
void set_attention_chunk_elements(int64_t n);
int64_t attention_chunk_elements();
class AttentionChunkScope {
 public:
  explicit AttentionChunkScope(int64_t n) : prev_(attention_chunk_elements()) { set_attention_chunk_elements(n); }
  ~AttentionChunkScope() { set_attention_chunk_elements(prev_); }
  AttentionChunkScope(const AttentionChunkScope&) = delete;
  AttentionChunkScope& operator=(const AttentionChunkScope&) = delete;

 private:
  int64_t prev_;
};

class CrossAttention : public torch::nn::Module {
 public:
  CrossAttention(int64_t query_dim, int64_t context_dim /*0: self*/, int64_t heads, int64_t dim_head);
  // residual (optional): added to the output, inside to_out's matmul where it can
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {}, const torch::Tensor& residual = {});
  std::shared_ptr<nn::Linear> to_q, to_k, to_v, to_out0;
  int64_t heads, dim_head;
};

class FeedForward : public torch::nn::Module {
 public:
  FeedForward(int64_t dim, int64_t mult = 4, bool glu = true);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual = {});  // as CrossAttention's
  std::shared_ptr<nn::Linear> proj_in, proj_out;  // net.0.proj (or net.0.0), net.2
  bool glu;
};

class BasicTransformerBlock : public torch::nn::Module {
 public:
  BasicTransformerBlock(int64_t dim, int64_t n_heads, int64_t d_head, int64_t context_dim, bool checkpoint,
                        bool disable_self_attn = false);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  std::shared_ptr<CrossAttention> attn1, attn2;
  std::shared_ptr<FeedForward> ff;
  std::shared_ptr<nn::LayerNorm> norm1, norm2, norm3;
  bool use_checkpoint, disable_self_attn;
};

class SpatialTransformer : public torch::nn::Module {
 public:
  // context_dims: one per depth (a single value is repeated).
  SpatialTransformer(int64_t in_channels, int64_t n_heads, int64_t d_head, int64_t depth,
                     std::vector<int64_t> context_dims, bool disable_self_attn, bool use_linear, bool checkpoint);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  std::shared_ptr<nn::GroupNorm> norm;
  std::shared_ptr<nn::Conv> proj_in_conv, proj_out_conv;
  std::shared_ptr<nn::Linear> proj_in_lin, proj_out_lin;
  std::vector<std::shared_ptr<BasicTransformerBlock>> blocks;
  bool use_linear;
};

// Linear attention (Katharopoulos-style, softmax over keys); to_qkv, to_out.
class LinearAttention : public torch::nn::Module {
 public:
  LinearAttention(int64_t dim, int64_t heads = 4, int64_t dim_head = 32);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<nn::Conv> to_qkv, to_out;
  int64_t heads;
};

// Single-head self-attention over pixels with 1x1 convs (norm, q, k, v, proj_out).
class SpatialSelfAttention : public torch::nn::Module {
 public:
  explicit SpatialSelfAttention(int64_t in_channels);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<nn::GroupNorm> norm;
  std::shared_ptr<nn::Conv> q, k, v, proj_out;
};

}  // namespace ldm
