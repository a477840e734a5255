#include "ldm/modules/encoders/clip_text.h"

#include <torch/torch.h>

#include <cmath>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

ClipBlock::ClipBlock(const ClipTextOptions& o, bool openclip)
    : openclip_(openclip), quick_gelu_(o.quick_gelu), heads_(o.heads) {
  const int64_t w = o.width;
  auto attn = std::make_shared<nn::Holder>();
  auto mlp = std::make_shared<nn::Holder>();
  ln1_ = std::make_shared<nn::LayerNorm>(w);
  ln2_ = std::make_shared<nn::LayerNorm>(w);
  out_ = std::make_shared<nn::Linear>(w, w);
  fc1_ = std::make_shared<nn::Linear>(w, 4 * w);
  fc2_ = std::make_shared<nn::Linear>(4 * w, w);
  if (openclip) {  // resblocks.N.{ln_1, attn.{in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.{c_fc, c_proj}}
    register_module("ln_1", ln1_);
    in_proj_weight_ = attn->register_parameter("in_proj_weight", nn::make_param({3 * w, w}, 1.0 / std::sqrt(w)));
    in_proj_bias_ = attn->register_parameter("in_proj_bias", nn::make_const({3 * w}, 0.0));
    attn->add("out_proj", out_);
    register_module("attn", attn);
    register_module("ln_2", ln2_);
    mlp->add("c_fc", fc1_);
    mlp->add("c_proj", fc2_);
    register_module("mlp", mlp);
  } else {  // layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.{fc1, fc2}, layer_norm2}
    q_ = std::make_shared<nn::Linear>(w, w);
    k_ = std::make_shared<nn::Linear>(w, w);
    v_ = std::make_shared<nn::Linear>(w, w);
    attn->add("k_proj", k_);
    attn->add("v_proj", v_);
    attn->add("q_proj", q_);
    attn->add("out_proj", out_);
    register_module("self_attn", attn);
    register_module("layer_norm1", ln1_);
    mlp->add("fc1", fc1_);
    mlp->add("fc2", fc2_);
    register_module("mlp", mlp);
    register_module("layer_norm2", ln2_);
  }
}

torch::Tensor ClipBlock::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t B = x.size(0), L = x.size(1), W = x.size(2), D = W / heads_;
  auto h = ln1_->forward(x);
  torch::Tensor q, k, v;
  if (openclip_) {
    auto qkv = torch::nn::functional::linear(h, in_proj_weight_, in_proj_bias_).chunk(3, -1);
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    q = q_->forward(h), k = k_->forward(h), v = v_->forward(h);
  }
  auto split = [&](const torch::Tensor& t) { return t.view({B, L, heads_, D}).transpose(1, 2); };
  auto s = torch::matmul(split(q) * (1.0 / std::sqrt(static_cast<double>(D))), split(k).transpose(-1, -2)) + mask;
  auto a = torch::matmul(torch::softmax(s, -1), split(v)).transpose(1, 2).reshape({B, L, W});
  auto x1 = x + out_->forward(a);
  auto m = fc1_->forward(ln2_->forward(x1));
  m = quick_gelu_ ? m * torch::sigmoid(1.702 * m) : torch::gelu(m);
  return x1 + fc2_->forward(m);
}

ClipTextTransformer::ClipTextTransformer(const ClipTextOptions& o, bool openclip) : o_(o), openclip_(openclip) {
  if (o.width % o.heads) throw Error("CLIP text encoder: width " + std::to_string(o.width) + " is not divisible by heads");
  token_embedding_ = std::make_shared<nn::Embedding>(o.vocab_size, o.width);
  final_ln_ = std::make_shared<nn::LayerNorm>(o.width);
  auto blocks = std::make_shared<nn::Holder>();
  for (int64_t i = 0; i < o.layers; ++i) {
    blocks_.push_back(std::make_shared<ClipBlock>(o, openclip));
    blocks->add(std::to_string(i), blocks_.back());
  }
  if (openclip) {
    register_module("token_embedding", token_embedding_);
    positional_embedding_ = register_parameter("positional_embedding", nn::make_normal({o.max_length, o.width}));
    auto tr = register_module("transformer", std::make_shared<nn::Holder>());
    tr->add("resblocks", blocks);
    register_module("ln_final", final_ln_);
    register_parameter("text_projection", nn::make_normal({o.width, o.width}));
    register_parameter("logit_scale", nn::make_const({}, std::log(1 / 0.07)));
  } else {
    auto emb = register_module("embeddings", std::make_shared<nn::Holder>());
    emb->add("token_embedding", token_embedding_);
    position_embedding_ = std::make_shared<nn::Embedding>(o.max_length, o.width);
    emb->add("position_embedding", position_embedding_);
    position_ids_ = emb->register_buffer("position_ids", torch::arange(o.max_length, torch::kInt64).unsqueeze(0));
    auto enc = register_module("encoder", std::make_shared<nn::Holder>());
    enc->add("layers", blocks);
    register_module("final_layer_norm", final_ln_);
  }
}

ClipTextOutput ClipTextTransformer::forward(const torch::Tensor& ids_in, int64_t stop_after) {
  auto ids = ids_in.to(torch::kInt64).to(token_embedding_->weight.device());
  const int64_t L = ids.size(1);
  if (L > o_.max_length) throw Error("CLIP text encoder: " + std::to_string(L) + " tokens, at most " + std::to_string(o_.max_length));
  auto x = token_embedding_->forward(extra_.defined() ? ids.clamp_max(o_.vocab_size - 1) : ids);
  if (extra_.defined()) {  // textual-inversion ids past the vocabulary
    auto is_extra = ids.ge(o_.vocab_size);
    auto vec = extra_.to(x.dtype()).to(x.device()).index_select(0, (ids - o_.vocab_size).clamp(0, extra_.size(0) - 1).flatten());
    x = torch::where(is_extra.unsqueeze(-1), vec.view(x.sizes()), x);
  }
  x = x + (openclip_ ? positional_embedding_.slice(0, 0, L) : position_embedding_->weight.slice(0, 0, L)).to(x.dtype());
  // causal mask: token i attends to j <= i
  auto mask = torch::full({L, L}, -std::numeric_limits<float>::infinity(), x.options()).triu(1);
  ClipTextOutput out;
  out.hidden_states.push_back(x);
  const int64_t n = stop_after < 0 ? o_.layers : std::min(stop_after, o_.layers);
  for (int64_t i = 0; i < n; ++i) {
    x = blocks_[i]->forward(x, mask);
    out.hidden_states.push_back(x);
  }
  out.last_hidden_state = final_ln_->forward(x);
  auto eot = (extra_.defined() ? ids.masked_fill(ids.ge(o_.vocab_size), 0) : ids).argmax(-1);
  out.pooled = out.last_hidden_state.index({torch::arange(ids.size(0), ids.device()), eot});
  return out;
}

torch::Tensor TextEncoder::tokenize(const std::vector<std::string>& texts) const {
  if (!tokenizer_)
    throw Error("text conditioning needs a CLIP vocabulary: give --vocab FILE (bpe_simple_vocab_16e6.txt.gz, or "
                "vocab.json with merges.txt beside it), or put one beside the checkpoint");
  std::vector<int64_t> all;
  for (auto& t : texts) {
    auto ids = tokenizer_->tokenize(t, max_length(), pad_id());
    all.insert(all.end(), ids.begin(), ids.end());
  }
  return torch::tensor(all, torch::kInt64).view({static_cast<int64_t>(texts.size()), max_length()});
}

void TextEncoder::add_embedding(const std::string& name, const torch::Tensor& vectors) {
  if (!tokenizer_) throw Error("embedding " + name + ": attach the tokenizer first");
  auto& tm = transformer();
  const int64_t width = tm.options().width;
  if (vectors.dim() != 2 || vectors.size(1) != width)
    throw Error("embedding " + name + ": vectors " + c10::str(vectors.sizes()) + " do not fit this text encoder (width " +
                std::to_string(width) + ")");
  const int64_t first = tm.options().vocab_size + tm.extra_tokens();
  std::vector<int64_t> ids(vectors.size(0));
  for (int64_t i = 0; i < vectors.size(0); ++i) ids[i] = first + i;
  auto vec = vectors.to(torch::kFloat32);
  tm.set_extra_tokens(tm.extra_tokens() ? torch::cat({tm.extra(), vec}) : vec);
  auto t = std::make_shared<ClipTokenizer>(*tokenizer_);  // the shared one stays as it was
  t->add_word(name, ids);
  tokenizer_ = t;
}

size_t TextEncoder::windows(const std::string& text) const {
  if (!tokenizer_) tokenize({});  // the missing-vocabulary error
  return tokenizer_->tokenize_windows(text, max_length(), pad_id()).ids.size();
}

torch::Tensor TextEncoder::encode(const std::vector<std::string>& texts, size_t min_windows) {
  if (!tokenizer_) tokenize({});
  size_t k = min_windows;
  for (auto& t : texts) k = std::max(k, windows(t));
  std::vector<int64_t> ids;
  std::vector<double> ws;
  bool weighted = false;
  for (auto& t : texts) {
    auto w = tokenizer_->tokenize_windows(t, max_length(), pad_id(), k);
    for (size_t i = 0; i < k; ++i) {
      ids.insert(ids.end(), w.ids[i].begin(), w.ids[i].end());
      ws.insert(ws.end(), w.weights[i].begin(), w.weights[i].end());
    }
  }
  for (double w : ws) weighted = weighted || w != 1.0;
  const int64_t n = static_cast<int64_t>(texts.size()), L = max_length();
  auto z = encode_ids(torch::tensor(ids, torch::kInt64).view({n * static_cast<int64_t>(k), L}));
  z = z.reshape({n, static_cast<int64_t>(k) * L, z.size(-1)});
  if (weighted) {
    auto w = torch::tensor(ws, z.options()).view({n, -1, 1});
    auto mean = z.mean({1, 2}, true);
    z = z * w;
    z = z * (mean / z.mean({1, 2}, true));
  }
  return z;
}

namespace {
ClipTextOptions read_options(const Params& p, ClipTextOptions o) {
  o.width = p.get<int64_t>("width", o.width);
  o.layers = p.get<int64_t>("layers", o.layers);
  o.heads = p.get<int64_t>("heads", o.heads);
  o.vocab_size = p.get<int64_t>("vocab_size", o.vocab_size);
  o.max_length = p.get<int64_t>("max_length", o.max_length);
  return o;
}
}  // namespace

FrozenCLIPEmbedder::FrozenCLIPEmbedder(ClipTextOptions o, std::string layer, int64_t layer_idx)
    : layer_(std::move(layer)), layer_idx_(layer_idx) {
  if (layer_ != "last" && layer_ != "pooled" && layer_ != "hidden" && layer_ != "penultimate")
    throw Error("FrozenCLIPEmbedder.layer: expected last, pooled, hidden or penultimate, got \"" + layer_ + "\"");
  auto tr = register_module("transformer", std::make_shared<nn::Holder>());
  text_model = std::make_shared<ClipTextTransformer>(o, false);
  tr->add("text_model", text_model);
}

std::shared_ptr<FrozenCLIPEmbedder> FrozenCLIPEmbedder::from_params(const Params& p) {
  auto o = read_options(p, ClipTextOptions{});
  p.ignore({"version", "device", "freeze"});  // weights come from the checkpoint; frozen unless cond_stage_trainable
  auto m = std::make_shared<FrozenCLIPEmbedder>(o, p.get<std::string>("layer", "last"), p.get<int64_t>("layer_idx", -1));
  p.check_unused("ldm.modules.encoders.modules.FrozenCLIPEmbedder");
  return m;
}

ClipTextOutput FrozenCLIPEmbedder::run(const torch::Tensor& ids) { return text_model->forward(ids); }

namespace {
// The blocks a clip skip of k runs (k >= 1): all but the last k - 1.
int64_t blocks_for(int64_t k, int64_t layers) {
  if (k < 1 || k > layers) throw Error("clip skip: expected 1 to " + std::to_string(layers) + " (the text encoder's layers), got " + std::to_string(k));
  return layers - (k - 1);
}
}  // namespace

torch::Tensor FrozenCLIPEmbedder::encode_ids(const torch::Tensor& ids) {
  // A1111's clip skip: hidden_states[-k] through the final layer norm
  if (clip_skip_ > 0 && layer_ == "pooled") throw Error("clip skip: this text encoder gives a pooled vector (layer: pooled)");
  if (clip_skip_ > 0)
    return text_model->forward(ids, blocks_for(clip_skip_, text_model->options().layers)).last_hidden_state;
  auto out = text_model->forward(ids);
  if (layer_ == "last") return out.last_hidden_state;
  if (layer_ == "pooled") return out.pooled.unsqueeze(1);
  // hidden: hidden_states[layer_idx] (Python indexing), no final norm; penultimate = -2
  int64_t idx = layer_ == "penultimate" ? -2 : layer_idx_;
  const int64_t n = static_cast<int64_t>(out.hidden_states.size());
  if (idx < 0) idx += n;
  if (idx < 0 || idx >= n) throw Error("FrozenCLIPEmbedder.layer_idx out of range");
  return out.hidden_states[idx];
}

FrozenOpenCLIPEmbedder::FrozenOpenCLIPEmbedder(ClipTextOptions o, std::string layer) : layer_(std::move(layer)) {
  if (layer_ != "last" && layer_ != "penultimate")
    throw Error("FrozenOpenCLIPEmbedder.layer: expected last or penultimate, got \"" + layer_ + "\"");
  model = register_module("model", std::make_shared<ClipTextTransformer>(o, true));
}

std::shared_ptr<FrozenOpenCLIPEmbedder> FrozenOpenCLIPEmbedder::from_params(const Params& p) {
  ClipTextOptions d;  // ViT-H/14 text tower
  d.width = 1024;
  d.layers = 24;
  d.heads = 16;
  d.quick_gelu = false;
  auto o = read_options(p, d);
  p.ignore({"arch", "version", "device", "freeze"});
  auto m = std::make_shared<FrozenOpenCLIPEmbedder>(o, p.get<std::string>("layer", "last"));
  p.check_unused("ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder");
  return m;
}

torch::Tensor FrozenOpenCLIPEmbedder::encode_ids(const torch::Tensor& ids) {
  // SD 2.x: the blocks up to (not including) the last when penultimate, then ln_final
  const int64_t k = clip_skip_ > 0 ? clip_skip_ : default_clip_skip();
  return model->forward(ids, blocks_for(k, model->options().layers)).last_hidden_state;
}

}  // namespace ldm
