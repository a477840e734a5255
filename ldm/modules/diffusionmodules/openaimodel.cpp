#include "ldm/modules/diffusionmodules/openaimodel.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "ldm/error.h"
#include "ldm/modules/attention.h"
#include "ldm/modules/diffusionmodules/util.h"
#include "ldm/util/config.h"

namespace ldm {

namespace {
constexpr double kUNetNormEps = 1e-5;  // GroupNorm32 default
std::shared_ptr<nn::GroupNorm> normalization(int64_t ch) { return std::make_shared<nn::GroupNorm>(32, ch, kUNetNormEps); }
}  // namespace

UNetOptions UNetOptions::from_params(const Params& p) {
  UNetOptions o;
  o.image_size = p.req<int64_t>("image_size");
  o.in_channels = p.req<int64_t>("in_channels");
  o.model_channels = p.req<int64_t>("model_channels");
  o.out_channels = p.req<int64_t>("out_channels");
  o.attention_resolutions = p.req<std::vector<int>>("attention_resolutions");
  o.dropout = p.get<double>("dropout", 0.0);
  o.channel_mult = p.get<std::vector<int>>("channel_mult", {1, 2, 4, 8});
  o.num_res_blocks = p.int_list("num_res_blocks", static_cast<int>(o.channel_mult.size()), {});
  if (o.num_res_blocks.empty()) throw Error(p.where() + ": missing required param \"num_res_blocks\"");
  if (o.num_res_blocks.size() != o.channel_mult.size())
    throw Error(p.where() + ".num_res_blocks: expected one value or one per channel_mult level");
  o.conv_resample = p.get<bool>("conv_resample", true);
  o.dims = p.get<int>("dims", 2);
  if (p.has("num_classes")) {
    auto n = p.node("num_classes");
    std::string s = n.IsScalar() ? n.Scalar() : "";
    if (s == "continuous" || s == "sequential")
      o.num_classes_mode = s;
    else
      o.num_classes = p.get<int64_t>("num_classes", 0);
  }
  o.adm_in_channels = p.get<int64_t>("adm_in_channels", 0);
  o.use_checkpoint = p.get<bool>("use_checkpoint", false);
  o.use_fp16 = p.get<bool>("use_fp16", false);
  o.num_heads = p.get<int64_t>("num_heads", -1);
  o.num_head_channels = p.get<int64_t>("num_head_channels", -1);
  o.num_heads_upsample = p.get<int64_t>("num_heads_upsample", -1);
  o.use_scale_shift_norm = p.get<bool>("use_scale_shift_norm", false);
  o.resblock_updown = p.get<bool>("resblock_updown", false);
  o.use_new_attention_order = p.get<bool>("use_new_attention_order", false);
  o.use_spatial_transformer = p.get<bool>("use_spatial_transformer", false);
  o.transformer_depth = p.get<int64_t>("transformer_depth", 1);
  if (p.has("context_dim")) {
    auto n = p.node("context_dim");
    if (n.IsSequence())
      for (int v : p.get<std::vector<int>>("context_dim", {})) o.context_dim.push_back(v);
    else
      o.context_dim.push_back(p.get<int64_t>("context_dim", 0));
  }
  o.n_embed = p.get<int64_t>("n_embed", 0);
  o.legacy = p.get<bool>("legacy", true);
  o.disable_self_attentions = p.get<std::vector<bool>>("disable_self_attentions", {});
  o.num_attention_blocks = p.get<std::vector<int>>("num_attention_blocks", {});
  o.disable_middle_self_attn = p.get<bool>("disable_middle_self_attn", false);
  o.use_linear_in_transformer = p.get<bool>("use_linear_in_transformer", false);
  p.ignore({"spatial_transformer_attn_type"});
  p.check_unused("ldm.modules.diffusionmodules.openaimodel.UNetModel");
  if (o.use_spatial_transformer && o.context_dim.empty())
    throw Error(p.where() + ": use_spatial_transformer needs context_dim");
  if (!o.context_dim.empty() && !o.use_spatial_transformer)
    throw Error(p.where() + ": context_dim needs use_spatial_transformer: true");
  if (o.num_heads == -1 && o.num_head_channels == -1)
    throw Error(p.where() + ": set num_heads or num_head_channels");
  // per-level lists: one entry per channel_mult level, as the reference asserts
  auto per_level = [&](const char* key, size_t n) {
    if (n != 0 && n != o.channel_mult.size())
      throw Error(p.where() + "." + key + ": expected one entry per level of channel_mult (" +
                  std::to_string(o.channel_mult.size()) + "), got " + std::to_string(n));
  };
  per_level("disable_self_attentions", o.disable_self_attentions.size());
  per_level("num_attention_blocks", o.num_attention_blocks.size());
  return o;
}

torch::Tensor TimestepEmbedSequential::forward(torch::Tensor x, const torch::Tensor& emb, const torch::Tensor& ctx) {
  for (auto& f : fns_) x = f(x, emb, ctx);
  return x;
}

Upsample::Upsample(int64_t ch, bool use_conv, int d, int64_t out, int64_t padding) : dims(d) {
  if (use_conv) conv = register_module("conv", std::make_shared<nn::Conv>(d, ch, out > 0 ? out : ch, 3, 1, padding));
}

torch::Tensor Upsample::forward(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  torch::Tensor y;
  if (dims == 3)
    y = F::interpolate(x, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{x.size(2), x.size(3) * 2, x.size(4) * 2})
                              .mode(torch::kNearest));
  else
    y = F::interpolate(x, F::InterpolateFuncOptions()
                              .scale_factor(std::vector<double>(dims, 2.0))
                              .mode(torch::kNearest));
  return conv ? conv->forward(y) : y;
}

Downsample::Downsample(int64_t ch, bool use_conv, int d, int64_t out, int64_t padding) : dims(d) {
  std::vector<int64_t> stride = d == 3 ? std::vector<int64_t>{1, 2, 2} : std::vector<int64_t>(d, 2);
  if (use_conv) op = register_module("op", std::make_shared<nn::Conv>(d, ch, out > 0 ? out : ch, 3, stride, padding));
}

torch::Tensor Downsample::forward(const torch::Tensor& x) {
  if (op) return op->forward(x);
  if (dims == 1) return torch::avg_pool1d(x, {2}, {2});
  if (dims == 2) return torch::avg_pool2d(x, {2, 2}, {2, 2});
  return torch::avg_pool3d(x, {1, 2, 2}, {1, 2, 2});
}

ResBlock::ResBlock(int64_t ch, int64_t emb_ch, double drop, int64_t out, bool use_conv, bool ss, int d, bool ckpt,
                   bool up, bool down)
    : dropout(drop), scale_shift(ss), use_checkpoint(ckpt) {
  if (out <= 0) out = ch;
  auto in_layers = register_module("in_layers", std::make_shared<nn::Holder>());
  in_norm = in_layers->add("0", normalization(ch));
  in_conv = in_layers->add("2", std::make_shared<nn::Conv>(d, ch, out, 3, 1, 1));
  if (up) {
    h_up = std::make_shared<Upsample>(ch, false, d, 0);
    x_up = std::make_shared<Upsample>(ch, false, d, 0);
  } else if (down) {
    h_down = std::make_shared<Downsample>(ch, false, d, 0);
    x_down = std::make_shared<Downsample>(ch, false, d, 0);
  }
  auto emb_layers = register_module("emb_layers", std::make_shared<nn::Holder>());
  emb_linear = emb_layers->add("1", std::make_shared<nn::Linear>(emb_ch, ss ? 2 * out : out));
  auto out_layers = register_module("out_layers", std::make_shared<nn::Holder>());
  out_norm = out_layers->add("0", normalization(out));
  out_conv = out_layers->add("3", std::make_shared<nn::Conv>(d, out, out, 3, 1, 1));
  out_conv->zero_();
  if (out != ch)
    skip_conv = register_module("skip_connection", std::make_shared<nn::Conv>(d, ch, out, use_conv ? 3 : 1, 1, use_conv ? 1 : 0));
}

torch::Tensor ResBlock::body(const torch::Tensor& x_in, const torch::Tensor& emb) {
  torch::Tensor x = x_in, h;
  if (h_up || h_down) {
    // resblock_updown: resample after GN+SiLU, before the first conv
    h = in_norm->forward_silu(x);
    h = h_up ? h_up->forward(h) : h_down->forward(h);
    x = x_up ? x_up->forward(x) : x_down->forward(x);
    h = in_conv->forward(h);
  } else {
    h = in_conv->forward(in_norm->forward_silu(x));
  }
  auto e = emb_linear->forward(torch::silu(emb)).to(h.scalar_type());
  while (e.dim() < h.dim()) e = e.unsqueeze(-1);
  if (scale_shift) {
    auto ss = e.chunk(2, 1);  // (scale, shift)
    h = out_norm->forward_scale_shift_silu(h, ss[0], ss[1]);
  } else {
    h = out_norm->forward_silu(h + e);
  }
  h = torch::dropout(h, dropout, is_training());
  h = out_conv->forward(h);
  return (skip_conv ? skip_conv->forward(x) : x) + h;
}

torch::Tensor ResBlock::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  return checkpoint([this](const std::vector<torch::Tensor>& in) { return body(in[0], in[1]); }, {x, emb}, *this,
                    use_checkpoint);
}

AttentionBlock::AttentionBlock(int64_t ch, int64_t heads, int64_t head_ch, bool ckpt, bool new_order)
    : use_checkpoint(ckpt), new_order(new_order) {
  if (head_ch == -1) {
    num_heads = heads;
  } else {
    if (ch % head_ch != 0) throw Error("AttentionBlock: channels " + std::to_string(ch) + " not divisible by num_head_channels " + std::to_string(head_ch));
    num_heads = ch / head_ch;
  }
  norm = register_module("norm", normalization(ch));
  qkv = register_module("qkv", std::make_shared<nn::Conv>(1, ch, 3 * ch, 1));
  proj_out = register_module("proj_out", std::make_shared<nn::Conv>(1, ch, ch, 1));
  proj_out->zero_();
}

torch::Tensor AttentionBlock::forward(const torch::Tensor& x_in) {
  auto body = [this](const std::vector<torch::Tensor>& in) {
    const auto& x0 = in[0];
    auto B = x0.size(0), C = x0.size(1);
    auto x = x0.reshape({B, C, -1});
    int64_t T = x.size(2);
    auto qkv_out = qkv->forward(norm->forward(x));  // [B, 3C, T]
    int64_t ch = C / num_heads;
    torch::Tensor q, k, v;
    if (new_order) {  // QKVAttention: [q | k | v] over all heads
      auto parts = qkv_out.chunk(3, 1);
      q = parts[0].reshape({B * num_heads, ch, T});
      k = parts[1].reshape({B * num_heads, ch, T});
      v = parts[2].reshape({B * num_heads, ch, T});
    } else {  // QKVAttentionLegacy: per head [q | k | v]
      auto parts = qkv_out.reshape({B * num_heads, 3 * ch, T}).split(ch, 1);
      q = parts[0], k = parts[1], v = parts[2];
    }
    // softmax(q^T k / sqrt(ch)); the reference scales q and k by ch^-1/4 each.
    double s = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
    auto a = attention((q * s).transpose(1, 2), (k * s).transpose(1, 2), v.transpose(1, 2), 1.0);
    auto h = proj_out->forward(a.transpose(1, 2).reshape({B, C, T}));
    return (x + h).reshape(x0.sizes());
  };
  return checkpoint(body, {x_in}, *this, use_checkpoint);
}

UNetModel::UNetModel(UNetOptions o) : o_(std::move(o)) {
  const auto& O = o_;
  const int64_t mc = O.model_channels, ted = mc * 4;
  const size_t levels = O.channel_mult.size();
  std::vector<int> nrb = O.num_res_blocks;
  if (nrb.size() == 1 && levels > 1) nrb.assign(levels, nrb[0]);
  if (nrb.size() != levels) throw Error("UNetModel: num_res_blocks needs one value per channel_mult level");
  if (!O.num_attention_blocks.empty() && O.num_attention_blocks.size() != levels)
    throw Error("UNetModel: num_attention_blocks needs one value per level");
  int64_t num_heads = O.num_heads;
  const int64_t num_heads_upsample = O.num_heads_upsample == -1 ? O.num_heads : O.num_heads_upsample;
  auto has_attn = [&](int ds) {
    return std::find(O.attention_resolutions.begin(), O.attention_resolutions.end(), ds) != O.attention_resolutions.end();
  };

  auto te = register_module("time_embed", std::make_shared<nn::Holder>());
  time_embed0 = te->add("0", std::make_shared<nn::Linear>(mc, ted));
  time_embed2 = te->add("2", std::make_shared<nn::Linear>(ted, ted));
  if (O.num_classes > 0) {
    label_emb = register_module("label_emb", std::make_shared<nn::Embedding>(O.num_classes, ted));
  } else if (O.num_classes_mode == "continuous") {
    label_lin0 = register_module("label_emb", std::make_shared<nn::Linear>(1, ted));
  } else if (O.num_classes_mode == "sequential") {
    auto le = register_module("label_emb", std::make_shared<nn::Holder>());
    auto le0 = le->add("0", std::make_shared<nn::Holder>());
    label_lin0 = le0->add("0", std::make_shared<nn::Linear>(O.adm_in_channels, ted));
    label_lin2 = le0->add("2", std::make_shared<nn::Linear>(ted, ted));
  }

  auto res = [&](int64_t in, int64_t out, bool up, bool down) {
    auto r = std::make_shared<ResBlock>(in, ted, O.dropout, out, false, O.use_scale_shift_norm, O.dims,
                                        O.use_checkpoint, up, down);
    BlockFn f = [p = r.get()](const torch::Tensor& x, const torch::Tensor& e, const torch::Tensor&) {
      return p->forward(x, e);
    };
    return std::make_pair(r, f);
  };
  // The reference recomputes heads per attention layer and, with
  // num_head_channels, overwrites num_heads as it goes (kept here).
  auto add_attn = [&](TimestepEmbedSequential& seq, int64_t ch, int64_t heads_for_block, bool disable_sa) {
    int64_t dim_head;
    if (O.num_head_channels == -1) {
      dim_head = ch / num_heads;
    } else {
      num_heads = ch / O.num_head_channels;
      dim_head = O.num_head_channels;
    }
    if (O.legacy) dim_head = O.use_spatial_transformer ? ch / num_heads : O.num_head_channels;
    if (!O.use_spatial_transformer) {
      auto a = std::make_shared<AttentionBlock>(ch, heads_for_block < 0 ? num_heads : heads_for_block, dim_head,
                                                O.use_checkpoint, O.use_new_attention_order);
      seq.add(a, [p = a.get()](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return p->forward(x); });
    } else {
      auto t = std::make_shared<SpatialTransformer>(ch, num_heads, dim_head, O.transformer_depth, O.context_dim,
                                                    disable_sa, O.use_linear_in_transformer, O.use_checkpoint);
      seq.add(t, [p = t.get()](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& c) { return p->forward(x, c); });
    }
  };

  auto ib = register_module("input_blocks", std::make_shared<nn::Holder>());
  auto new_block = [&](nn::Holder& holder, std::vector<std::shared_ptr<TimestepEmbedSequential>>& list) {
    list.push_back(holder.add(std::to_string(list.size()), std::make_shared<TimestepEmbedSequential>()));
    return list.back();
  };
  {
    auto b = new_block(*ib, input_blocks);
    auto c = std::make_shared<nn::Conv>(O.dims, O.in_channels, mc, 3, 1, 1);
    b->add(c, [p = c.get()](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return p->forward(x); });
  }
  std::vector<int64_t> chans{mc};
  int64_t ch = mc;
  int ds = 1;
  for (size_t level = 0; level < levels; ++level) {
    bool dsa = !O.disable_self_attentions.empty() && O.disable_self_attentions.at(level);
    for (int nr = 0; nr < nrb[level]; ++nr) {
      auto b = new_block(*ib, input_blocks);
      auto [r, f] = res(ch, O.channel_mult[level] * mc, false, false);
      b->add(r, f);
      ch = O.channel_mult[level] * mc;
      if (has_attn(ds) && (O.num_attention_blocks.empty() || nr < O.num_attention_blocks[level]))
        add_attn(*b, ch, -1, dsa);
      chans.push_back(ch);
    }
    if (level != levels - 1) {
      auto b = new_block(*ib, input_blocks);
      if (O.resblock_updown) {
        auto [r, f] = res(ch, ch, false, true);
        b->add(r, f);
      } else {
        auto d = std::make_shared<Downsample>(ch, O.conv_resample, O.dims, ch);
        b->add(d, [p = d.get()](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return p->forward(x); });
      }
      chans.push_back(ch);
      ds *= 2;
    }
  }

  middle_block = register_module("middle_block", std::make_shared<TimestepEmbedSequential>());
  {
    auto [r1, f1] = res(ch, ch, false, false);
    middle_block->add(r1, f1);
    add_attn(*middle_block, ch, -1, O.disable_middle_self_attn);
    auto [r2, f2] = res(ch, ch, false, false);
    middle_block->add(r2, f2);
  }

  auto ob = register_module("output_blocks", std::make_shared<nn::Holder>());
  for (size_t li = levels; li-- > 0;) {
    bool dsa = !O.disable_self_attentions.empty() && O.disable_self_attentions.at(li);
    for (int i = 0; i <= nrb[li]; ++i) {
      int64_t ich = chans.back();
      chans.pop_back();
      auto b = new_block(*ob, output_blocks);
      auto [r, f] = res(ch + ich, mc * O.channel_mult[li], false, false);
      b->add(r, f);
      ch = mc * O.channel_mult[li];
      if (has_attn(ds) && (O.num_attention_blocks.empty() || i < O.num_attention_blocks[li]))
        add_attn(*b, ch, num_heads_upsample, dsa);
      if (li > 0 && i == nrb[li]) {
        if (O.resblock_updown) {
          auto [ru, fu] = res(ch, ch, true, false);
          b->add(ru, fu);
        } else {
          auto u = std::make_shared<Upsample>(ch, O.conv_resample, O.dims, ch);
          b->add(u, [p = u.get()](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return p->forward(x); });
        }
        ds /= 2;
      }
    }
  }

  auto out = register_module("out", std::make_shared<nn::Holder>());
  out_norm = out->add("0", normalization(ch));
  out_conv = out->add("2", std::make_shared<nn::Conv>(O.dims, mc, O.out_channels, 3, 1, 1));
  out_conv->zero_();
  if (O.n_embed > 0) {
    auto idp = register_module("id_predictor", std::make_shared<nn::Holder>());
    id_norm = idp->add("0", normalization(ch));
    id_conv = idp->add("1", std::make_shared<nn::Conv>(O.dims, mc, O.n_embed, 1));
  }
}

torch::Tensor UNetModel::forward(const torch::Tensor& x, const torch::Tensor& timesteps, const torch::Tensor& context,
                                 const torch::Tensor& y) {
  bool conditional = label_emb || label_lin0;
  if (y.defined() != conditional)
    throw Error(conditional ? "UNetModel: this model is class-conditional; pass labels y"
                            : "UNetModel: y given but the model has no num_classes");
  if (o_.use_spatial_transformer && !context.defined())
    throw Error("UNetModel: this model uses cross-attention; pass a context");
  auto t = timesteps.dim() == 0 ? timesteps.expand({x.size(0)}) : timesteps;
  // the sinusoids in the weights' dtype (float32 otherwise; a float64 copy of the model is a test's reference)
  auto t_emb = timestep_embedding(t, o_.model_channels).to(time_embed0->weight.scalar_type());
  auto emb = time_embed2->forward(torch::silu(time_embed0->forward(t_emb)));
  if (label_emb) {
    if (y.dim() != 1 || y.size(0) != x.size(0)) throw Error("UNetModel: y must be [N] labels");
    emb = emb + label_emb->forward(y.to(torch::kInt64));
  } else if (label_lin2) {
    emb = emb + label_lin2->forward(torch::silu(label_lin0->forward(y)));
  } else if (label_lin0) {
    emb = emb + label_lin0->forward(y);
  }
  std::vector<torch::Tensor> hs;
  torch::Tensor h = nn::compute_layout(x, time_embed0->weight);
  // the context in the maps' dtype once (bf16 inference): autocast would cast it in every to_k and to_v
  const auto ctx = context.defined() && h.scalar_type() == torch::kBFloat16 && context.scalar_type() == torch::kFloat32 &&
                           !torch::GradMode::is_enabled()
                       ? context.to(torch::kBFloat16)
                       : context;
  for (auto& b : input_blocks) {
    h = b->forward(h, emb, ctx);
    hs.push_back(h);
  }
  h = middle_block->forward(h, emb, ctx);
  for (auto& b : output_blocks) {
    h = torch::cat({h, hs.back()}, 1);
    hs.pop_back();
    h = b->forward(h, emb, ctx);
  }
  h = id_conv ? id_conv->forward(id_norm->forward(h)) : out_conv->forward(out_norm->forward_silu(h));
  return h.contiguous(x.suggest_memory_format());
}

}  // namespace ldm
