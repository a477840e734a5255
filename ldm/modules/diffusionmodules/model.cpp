#include "ldm/modules/diffusionmodules/model.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "ldm/error.h"
#include "ldm/modules/attention.h"
#include "ldm/util/config.h"

namespace ldm {

namespace {
constexpr double kVaeNormEps = 1e-6;  // Normalize() in model.py
std::shared_ptr<nn::GroupNorm> Normalize(int64_t c) { return std::make_shared<nn::GroupNorm>(32, c, kVaeNormEps); }

AttnFn make_attn(int64_t in, const std::string& type) {
  if (type == "vanilla") {
    auto a = std::make_shared<AttnBlock>(in);
    return {a, [p = a.get()](const torch::Tensor& x) { return p->forward(x); }};
  }
  if (type == "linear") {  // LinAttnBlock = LinearAttention(dim=in, heads=1, dim_head=in)
    auto a = std::make_shared<LinearAttention>(in, 1, in);
    return {a, [p = a.get()](const torch::Tensor& x) { return p->forward(x); }};
  }
  return {nullptr, [](const torch::Tensor& x) { return x; }};
}

torch::Tensor upsample2(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::interpolate(x, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest));
}
bool contains(const std::vector<int>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }
}  // namespace

DDConfig DDConfig::from_params(const Params& p) {
  DDConfig c;
  c.ch = p.req<int64_t>("ch");
  c.out_ch = p.req<int64_t>("out_ch");
  c.ch_mult = p.get<std::vector<int>>("ch_mult", c.ch_mult);
  c.num_res_blocks = p.req<int>("num_res_blocks");
  c.attn_resolutions = p.req<std::vector<int>>("attn_resolutions");
  c.dropout = p.get<double>("dropout", 0.0);
  c.resamp_with_conv = p.get<bool>("resamp_with_conv", true);
  c.in_channels = p.req<int64_t>("in_channels");
  c.resolution = p.req<int64_t>("resolution");
  c.z_channels = p.req<int64_t>("z_channels");
  c.double_z = p.get<bool>("double_z", true);
  c.give_pre_end = p.get<bool>("give_pre_end", false);
  c.tanh_out = p.get<bool>("tanh_out", false);
  c.attn_type = p.get<std::string>("attn_type", "vanilla");
  if (p.get<bool>("use_linear_attn", false)) c.attn_type = "linear";
  if (c.attn_type != "vanilla" && c.attn_type != "linear" && c.attn_type != "none")
    throw Error(p.where() + ".attn_type: expected vanilla, linear or none, got \"" + c.attn_type + "\"");
  p.check_unused("ddconfig");
  return c;
}

ResnetBlock::ResnetBlock(int64_t in, int64_t out, bool conv_shortcut, double drop, int64_t temb) : dropout(drop) {
  if (out <= 0) out = in;
  norm1 = register_module("norm1", Normalize(in));
  conv1 = register_module("conv1", std::make_shared<nn::Conv>(2, in, out, 3, 1, 1));
  if (temb > 0) temb_proj = register_module("temb_proj", std::make_shared<nn::Linear>(temb, out));
  norm2 = register_module("norm2", Normalize(out));
  conv2 = register_module("conv2", std::make_shared<nn::Conv>(2, out, out, 3, 1, 1));
  if (in != out)
    shortcut = conv_shortcut ? register_module("conv_shortcut", std::make_shared<nn::Conv>(2, in, out, 3, 1, 1))
                             : register_module("nin_shortcut", std::make_shared<nn::Conv>(2, in, out, 1));
}

torch::Tensor ResnetBlock::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  auto h = conv1->forward(norm1->forward_silu(x));
  if (temb_proj && temb.defined()) h = h + temb_proj->forward(torch::silu(temb)).unsqueeze(-1).unsqueeze(-1);
  h = norm2->forward_silu(h);
  h = conv2->forward(torch::dropout(h, dropout, is_training()));
  return (shortcut ? shortcut->forward(x) : x) + h;
}

Encoder::Encoder(const DDConfig& c) : c_(c) {
  const size_t L = c.ch_mult.size();
  conv_in = register_module("conv_in", std::make_shared<nn::Conv>(2, c.in_channels, c.ch, 3, 1, 1));
  auto down = register_module("down", std::make_shared<nn::Holder>());
  int64_t res = c.resolution, block_in = c.ch;
  for (size_t i = 0; i < L; ++i) {
    auto lvl = down->add(std::to_string(i), std::make_shared<nn::Holder>());
    auto bl = lvl->add("block", std::make_shared<nn::Holder>());
    auto at = lvl->add("attn", std::make_shared<nn::Holder>());
    block_in = c.ch * (i == 0 ? 1 : c.ch_mult[i - 1]);
    int64_t block_out = c.ch * c.ch_mult[i];
    blocks.emplace_back();
    attns.emplace_back();
    for (int b = 0; b < c.num_res_blocks; ++b) {
      blocks[i].push_back(bl->add(std::to_string(b), std::make_shared<ResnetBlock>(block_in, block_out, false, c.dropout, 0)));
      block_in = block_out;
      if (contains(c.attn_resolutions, res)) {
        auto a = make_attn(block_in, c.attn_type);
        if (a.module) at->add(std::to_string(attns[i].size()), a.module);
        attns[i].push_back(a);
      }
    }
    std::shared_ptr<nn::Conv> d;
    if (i != L - 1) {
      auto ds = lvl->add("downsample", std::make_shared<nn::Holder>());
      if (c.resamp_with_conv) d = ds->add("conv", std::make_shared<nn::Conv>(2, block_in, block_in, 3, 2, 0));
      res /= 2;
    }
    downs.push_back(d);
  }
  auto mid = register_module("mid", std::make_shared<nn::Holder>());
  mid1 = mid->add("block_1", std::make_shared<ResnetBlock>(block_in, block_in, false, c.dropout, 0));
  mid_attn = make_attn(block_in, c.attn_type);
  if (mid_attn.module) mid->add("attn_1", mid_attn.module);
  mid2 = mid->add("block_2", std::make_shared<ResnetBlock>(block_in, block_in, false, c.dropout, 0));
  norm_out = register_module("norm_out", Normalize(block_in));
  conv_out = register_module("conv_out", std::make_shared<nn::Conv>(2, block_in, c.double_z ? 2 * c.z_channels : c.z_channels, 3, 1, 1));
}

torch::Tensor Encoder::forward(const torch::Tensor& x) {
  auto h = conv_in->forward(nn::compute_layout(x, conv_in->weight));
  const size_t L = c_.ch_mult.size();
  for (size_t i = 0; i < L; ++i) {
    for (size_t b = 0; b < blocks[i].size(); ++b) {
      h = blocks[i][b]->forward(h);
      if (!attns[i].empty()) h = attns[i][b].fn(h);
    }
    if (i != L - 1) {
      if (downs[i]) {
        // Asymmetric padding: right and bottom only, then a stride-2 conv.
        h = downs[i]->forward(torch::constant_pad_nd(h, {0, 1, 0, 1}, 0));
      } else {
        h = torch::avg_pool2d(h, {2, 2}, {2, 2});
      }
    }
  }
  h = mid2->forward(mid_attn.fn(mid1->forward(h)));
  return conv_out->forward(norm_out->forward_silu(h)).contiguous(x.suggest_memory_format());
}

Decoder::Decoder(const DDConfig& c) : c_(c) {
  const size_t L = c.ch_mult.size();
  int64_t block_in = c.ch * c.ch_mult.back();
  int64_t res = c.resolution >> (L - 1);
  conv_in = register_module("conv_in", std::make_shared<nn::Conv>(2, c.z_channels, block_in, 3, 1, 1));
  auto mid = register_module("mid", std::make_shared<nn::Holder>());
  mid1 = mid->add("block_1", std::make_shared<ResnetBlock>(block_in, block_in, false, c.dropout, 0));
  mid_attn = make_attn(block_in, c.attn_type);
  if (mid_attn.module) mid->add("attn_1", mid_attn.module);
  mid2 = mid->add("block_2", std::make_shared<ResnetBlock>(block_in, block_in, false, c.dropout, 0));
  blocks.resize(L);
  attns.resize(L);
  ups.resize(L);
  std::vector<std::shared_ptr<nn::Holder>> levels(L);
  for (size_t ii = L; ii-- > 0;) {
    levels[ii] = std::make_shared<nn::Holder>();
    auto bl = levels[ii]->add("block", std::make_shared<nn::Holder>());
    auto at = levels[ii]->add("attn", std::make_shared<nn::Holder>());
    int64_t block_out = c.ch * c.ch_mult[ii];
    for (int b = 0; b <= c.num_res_blocks; ++b) {
      blocks[ii].push_back(bl->add(std::to_string(b), std::make_shared<ResnetBlock>(block_in, block_out, false, c.dropout, 0)));
      block_in = block_out;
      if (contains(c.attn_resolutions, res)) {
        auto a = make_attn(block_in, c.attn_type);
        if (a.module) at->add(std::to_string(attns[ii].size()), a.module);
        attns[ii].push_back(a);
      }
    }
    if (ii != 0) {
      auto us = levels[ii]->add("upsample", std::make_shared<nn::Holder>());
      if (c.resamp_with_conv) ups[ii] = us->add("conv", std::make_shared<nn::Conv>(2, block_in, block_in, 3, 1, 1));
      res *= 2;
    }
  }
  // up.0 is the highest resolution, as the reference inserts at the front.
  auto up = register_module("up", std::make_shared<nn::Holder>());
  for (size_t i = 0; i < L; ++i) up->add(std::to_string(i), levels[i]);
  norm_out = register_module("norm_out", Normalize(block_in));
  conv_out = register_module("conv_out", std::make_shared<nn::Conv>(2, block_in, c.out_ch, 3, 1, 1));
}

torch::Tensor Decoder::forward(const torch::Tensor& z) {
  auto h = conv_in->forward(nn::compute_layout(z, conv_in->weight));
  h = mid2->forward(mid_attn.fn(mid1->forward(h)));
  for (size_t i = c_.ch_mult.size(); i-- > 0;) {
    for (size_t b = 0; b < blocks[i].size(); ++b) {
      h = blocks[i][b]->forward(h);
      if (!attns[i].empty()) h = attns[i][b].fn(h);
    }
    if (i != 0) {
      h = upsample2(h);
      if (ups[i]) h = ups[i]->forward(h);
    }
  }
  if (c_.give_pre_end) return h.contiguous(z.suggest_memory_format());
  h = conv_out->forward(norm_out->forward_silu(h));
  return (c_.tanh_out ? torch::tanh(h) : h).contiguous(z.suggest_memory_format());
}

}  // namespace ldm
