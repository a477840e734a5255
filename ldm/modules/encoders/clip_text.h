// CLIP text transformers as the Stable Diffusion cond stages use them:
// FrozenCLIPEmbedder (SD 1.x: Hugging Face CLIPTextModel keys
// transformer.text_model.*, quick_gelu) and FrozenOpenCLIPEmbedder (SD 2.x:
// OpenCLIP keys model.*, GELU, penultimate layer). Pre-LN blocks with a causal
// mask (Radford et al. 2021). The size comes from width/layers/heads/
// vocab_size/max_length (defaults ViT-L/14 and ViT-H/14) so small models work.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "ldm/modules/encoders/tokenizer.h"
#include "ldm/modules/layers.h"

namespace ldm {
class Params;

struct ClipTextOptions {
  int64_t width = 768, layers = 12, heads = 12, vocab_size = 49408, max_length = 77;
  bool quick_gelu = true;  // HF/OpenAI CLIP; OpenCLIP ViT-H uses GELU
};

struct ClipTextOutput {
  torch::Tensor last_hidden_state;           // final layer norm applied
  std::vector<torch::Tensor> hidden_states;  // embeddings, then after each block
  torch::Tensor pooled;                      // at the first end token (argmax id)
};

// One pre-LN block; names follow the layout (HF or OpenCLIP).
class ClipBlock : public torch::nn::Module {
 public:
  ClipBlock(const ClipTextOptions& o, bool openclip);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

 private:
  bool openclip_, quick_gelu_;
  int64_t heads_;
  std::shared_ptr<nn::LayerNorm> ln1_, ln2_;
  std::shared_ptr<nn::Linear> q_, k_, v_, out_, fc1_, fc2_;
  torch::Tensor in_proj_weight_, in_proj_bias_;  // OpenCLIP's fused q,k,v
};

// Hugging Face CLIPTextTransformer (registered as text_model.*).
class ClipTextTransformer : public torch::nn::Module {
 public:
  ClipTextTransformer(const ClipTextOptions& o, bool openclip);
  ClipTextOutput forward(const torch::Tensor& ids, int64_t stop_after = -1);  // stop_after: blocks to run (-1: all)
  const ClipTextOptions& options() const { return o_; }
  // Textual-inversion vectors [K, width]: ids vocab_size .. vocab_size + K - 1
  // look them up instead of the token table.
  void set_extra_tokens(torch::Tensor vectors) { extra_ = std::move(vectors); }
  int64_t extra_tokens() const { return extra_.defined() ? extra_.size(0) : 0; }
  const torch::Tensor& extra() const { return extra_; }

 private:
  ClipTextOptions o_;
  bool openclip_;
  std::shared_ptr<nn::Embedding> token_embedding_, position_embedding_;
  torch::Tensor positional_embedding_, position_ids_;
  std::vector<std::shared_ptr<ClipBlock>> blocks_;
  std::shared_ptr<nn::LayerNorm> final_ln_;
  torch::Tensor extra_;
};

// Shared interface of the text cond stages: ids -> context, and a tokenizer
// attached at load time (the vocabulary is not in the checkpoint).
class TextEncoder : public torch::nn::Module {
 public:
  virtual torch::Tensor encode_ids(const torch::Tensor& ids) = 0;  // [N, L] -> [N, L, width]
  virtual int64_t pad_id() const = 0;                              // SD 1.x: end token; SD 2.x: 0
  virtual int64_t max_length() const = 0;
  void set_tokenizer(std::shared_ptr<const ClipTokenizer> t) { tokenizer_ = std::move(t); }
  const ClipTokenizer* tokenizer() const { return tokenizer_.get(); }
  torch::Tensor tokenize(const std::vector<std::string>& texts) const;  // [N, max_length] int64
  // Prompts of any length with (word:1.2) weighting: 75-token windows encoded
  // separately and concatenated ([N, k * max_length, width]); weights scale the
  // token states, then the mean is restored (the web UIs' emphasis).
  // At least `min_windows` windows per prompt (guidance pairs need equal k).
  torch::Tensor encode(const std::vector<std::string>& texts, size_t min_windows = 1);
  size_t windows(const std::string& text) const;
  // A textual-inversion embedding: `name` in a prompt becomes `vectors` [n, width].
  void add_embedding(const std::string& name, const torch::Tensor& vectors);
  virtual ClipTextTransformer& transformer() = 0;
  // Clip skip (A1111's "Clip skip", stable-diffusion.cpp's --clip-skip): the
  // state after the k-th block from the end, final layer norm applied (1: the
  // last block, 2: the penultimate); 0: the config's own layer. The caller sets
  // it per request (ClipSkipScope).
  void set_clip_skip(int64_t k) { clip_skip_ = k; }
  int64_t clip_skip() const { return clip_skip_; }
  // The clip skip the config's layer amounts to (SD 1.x "last": 1, SD 2.x "penultimate": 2).
  virtual int64_t default_clip_skip() const = 0;

 protected:
  std::shared_ptr<const ClipTokenizer> tokenizer_;
  int64_t clip_skip_ = 0;
};

class ClipSkipScope {
 public:
  ClipSkipScope(TextEncoder& te, int64_t k) : te_(te), old_(te.clip_skip()) { te.set_clip_skip(k); }
  ~ClipSkipScope() { te_.set_clip_skip(old_); }
  ClipSkipScope(const ClipSkipScope&) = delete;
  ClipSkipScope& operator=(const ClipSkipScope&) = delete;

 private:
  TextEncoder& te_;
  int64_t old_;
};

class FrozenCLIPEmbedder : public TextEncoder {
 public:
  FrozenCLIPEmbedder(ClipTextOptions o, std::string layer = "last", int64_t layer_idx = -1);
  static std::shared_ptr<FrozenCLIPEmbedder> from_params(const Params& p);
  torch::Tensor encode_ids(const torch::Tensor& ids) override;
  ClipTextOutput run(const torch::Tensor& ids);
  int64_t pad_id() const override { return tokenizer_ ? tokenizer_->eot() : 49407; }
  int64_t max_length() const override { return text_model->options().max_length; }
  ClipTextTransformer& transformer() override { return *text_model; }
  int64_t default_clip_skip() const override { return layer_ == "penultimate" ? 2 : 1; }
  std::shared_ptr<ClipTextTransformer> text_model;

 private:
  std::string layer_;
  int64_t layer_idx_;
};

class FrozenOpenCLIPEmbedder : public TextEncoder {
 public:
  FrozenOpenCLIPEmbedder(ClipTextOptions o, std::string layer = "penultimate");
  static std::shared_ptr<FrozenOpenCLIPEmbedder> from_params(const Params& p);
  torch::Tensor encode_ids(const torch::Tensor& ids) override;
  int64_t pad_id() const override { return 0; }
  int64_t max_length() const override { return model->options().max_length; }
  ClipTextTransformer& transformer() override { return *model; }
  int64_t default_clip_skip() const override { return layer_ == "penultimate" ? 2 : 1; }
  std::shared_ptr<ClipTextTransformer> model;

 private:
  std::string layer_;
};

}  // namespace ldm
