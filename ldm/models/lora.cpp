#include "ldm/models/lora.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <regex>

#include "ldm/error.h"
#include "ldm/util/number.h"

namespace ldm {

namespace {
using Shapes = std::map<std::string, std::vector<int64_t>>;

const char* const kSuffixes[] = {"lora_down.weight", "lora_up.weight", "lora_A.weight", "lora_B.weight", "alpha",
                                 "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                                 "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                                 "lora_mid.weight", "dora_scale"};

std::string flat(std::string s) {
  for (auto& c : s)
    if (c == '.') c = '_';
  return s;
}

// Inside a resnet block: diffusers' names and LDM's (both directions use it).
const std::pair<const char*, const char*> kResnetNames[] = {
    {"conv1", "in_layers.2"},         {"conv2", "out_layers.3"}, {"time_emb_proj", "emb_layers.1"},
    {"conv_shortcut", "skip_connection"}, {"norm1", "in_layers.0"}, {"norm2", "out_layers.0"}};

// The diffusers UNet's module names in LDM's (both underscored): blocks of
// `step` = num_res_blocks + 1 per level, as openaimodel lays them out.
std::string diffusers_to_ldm(const std::string& n, int64_t step, const Shapes& shapes) {
  static const std::map<std::string, std::string> top = {{"conv_in", "input_blocks_0_0"},
                                                         {"conv_out", "out_2"},
                                                         {"conv_norm_out", "out_0"},
                                                         {"time_embedding_linear_1", "time_embed_0"},
                                                         {"time_embedding_linear_2", "time_embed_2"}};
  if (auto it = top.find(n); it != top.end()) return it->second;
  auto resnet = [](const std::string& r) {
    for (auto [diffusers, ldm] : kResnetNames)
      if (r == diffusers) return flat(ldm);
    return r;
  };
  std::smatch m;
  auto I = [&](int k) { return std::stoll(m[k].str()); };
  static const std::regex down_res("down_blocks_(\\d+)_resnets_(\\d+)_(.+)"), down_att("down_blocks_(\\d+)_attentions_(\\d+)_(.+)"),
      down_conv("down_blocks_(\\d+)_downsamplers_0_conv"), mid_res("mid_block_resnets_(\\d+)_(.+)"),
      mid_att("mid_block_attentions_0_(.+)"), up_res("up_blocks_(\\d+)_resnets_(\\d+)_(.+)"),
      up_att("up_blocks_(\\d+)_attentions_(\\d+)_(.+)"), up_conv("up_blocks_(\\d+)_upsamplers_0_conv");
  auto s = [](int64_t v) { return std::to_string(v); };
  if (std::regex_match(n, m, down_res)) return "input_blocks_" + s(1 + I(1) * step + I(2)) + "_0_" + resnet(m[3]);
  if (std::regex_match(n, m, down_att)) return "input_blocks_" + s(1 + I(1) * step + I(2)) + "_1_" + m[3].str();
  if (std::regex_match(n, m, down_conv)) return "input_blocks_" + s((I(1) + 1) * step) + "_0_op";
  if (std::regex_match(n, m, mid_res)) return "middle_block_" + s(2 * I(1)) + "_" + resnet(m[2]);
  if (std::regex_match(n, m, mid_att)) return "middle_block_1_" + m[1].str();
  if (std::regex_match(n, m, up_res)) return "output_blocks_" + s(I(1) * step + I(2)) + "_0_" + resnet(m[3]);
  if (std::regex_match(n, m, up_att)) return "output_blocks_" + s(I(1) * step + I(2)) + "_1_" + m[3].str();
  if (std::regex_match(n, m, up_conv)) {  // after the level's last block: index 2 when the level has attention
    const int64_t b = I(1) * step + step - 1;
    const bool attention = shapes.count("model.diffusion_model.output_blocks." + s(b) + ".2.conv.weight") > 0;
    return "output_blocks_" + s(b) + (attention ? "_2_conv" : "_1_conv");
  }
  return n;  // already LDM-style (input_blocks_4_1_...) or unknown
}

// Blocks per UNet level: the index of the first downsampler (input_blocks.N.0.op).
int64_t level_step(const Shapes& shapes) {
  for (int64_t i = 1; i < 64; ++i)
    if (shapes.count("model.diffusion_model.input_blocks." + std::to_string(i) + ".0.op.weight")) return i;
  return 3;
}

struct Target {
  std::string key;
  int64_t row_slice = -1;
};

// OpenCLIP (SD 2.x) keeps q/k/v in one in_proj_weight and names the MLP c_fc/c_proj.
bool open_clip_target(const std::string& te, const Shapes& shapes, Target& t) {
  static const std::regex re("text_model_encoder_layers_(\\d+)_(self_attn_(q|k|v)_proj|self_attn_out_proj|mlp_fc1|mlp_fc2)");
  std::smatch m;
  if (!std::regex_match(te, m, re)) return false;
  const std::string base = "cond_stage_model.model.transformer.resblocks." + m[1].str() + ".";
  const std::string what = m[2].str();
  if (m[3].matched) {
    t = {base + "attn.in_proj_weight", std::string("qkv").find(m[3].str()) == std::string::npos
                                           ? -1
                                           : static_cast<int64_t>(std::string("qkv").find(m[3].str()))};
  } else {
    t.key = base + (what == "self_attn_out_proj" ? "attn.out_proj.weight" : what == "mlp_fc1" ? "mlp.c_fc.weight"
                                                                                               : "mlp.c_proj.weight");
  }
  return shapes.count(t.key) > 0;
}

// The weight a module name changes, or false.
bool resolve(const std::string& module, const Shapes& shapes, const std::map<std::string, std::string>& by_flat,
             int64_t step, Target& t, bool& text) {
  std::string rest;
  auto starts = [&](const char* p) {
    if (module.rfind(p, 0) != 0) return false;
    rest = flat(module.substr(std::strlen(p)));
    return true;
  };
  std::string path;
  if (starts("lora_unet_") || starts("unet.") || starts("unet_")) {
    text = false;
    path = "model_diffusion_model_" + diffusers_to_ldm(rest, step, shapes);
  } else if (starts("lora_te_") || starts("text_encoder.") || starts("lora_te1_")) {
    text = true;
    if (open_clip_target(rest, shapes, t)) return true;
    path = "cond_stage_model_transformer_" + rest;
  } else {
    return false;
  }
  auto it = by_flat.find(path);
  if (it == by_flat.end()) return false;
  t = {it->second + ".weight", -1};
  return true;
}

torch::Tensor f32(const std::map<std::string, torch::Tensor>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? torch::Tensor() : it->second.to(torch::kFloat32);
}

torch::Tensor product(const torch::Tensor& a, const torch::Tensor& b) { return a.flatten(1).mm(b.flatten(1)); }

// delta of one module before scaling, and its rank (0: no alpha/rank scaling)
std::pair<torch::Tensor, int64_t> module_delta(const std::map<std::string, torch::Tensor>& p, const std::string& name) {
  if (p.count("lora_mid.weight") || p.count("hada_t1") || p.count("lokr_t2"))
    throw Error(name + ": Tucker-decomposed (conv CP) modules are not supported");
  auto down = p.count("lora_down.weight") ? f32(p, "lora_down.weight") : f32(p, "lora_A.weight");
  auto up = p.count("lora_up.weight") ? f32(p, "lora_up.weight") : f32(p, "lora_B.weight");
  if (down.defined() && up.defined()) {
    auto d = product(up, down);  // [out, in * k * k]
    if (down.dim() == 4) d = d.reshape({up.size(0), down.size(1), down.size(2), down.size(3)});
    return {d, down.size(0)};
  }
  if (p.count("hada_w1_a")) {  // LoHa: (w1a w1b) * (w2a w2b), Hadamard product
    auto w1 = f32(p, "hada_w1_a").mm(f32(p, "hada_w1_b")), w2 = f32(p, "hada_w2_a").mm(f32(p, "hada_w2_b"));
    return {w1 * w2, p.at("hada_w1_b").size(0)};
  }
  if (p.count("lokr_w1") || p.count("lokr_w1_a")) {  // LoKr: w1 (x) w2, Kronecker product
    auto w1 = p.count("lokr_w1") ? f32(p, "lokr_w1") : f32(p, "lokr_w1_a").mm(f32(p, "lokr_w1_b"));
    auto w2 = p.count("lokr_w2") ? f32(p, "lokr_w2") : product(f32(p, "lokr_w2_a"), f32(p, "lokr_w2_b"));
    if (p.count("lokr_w2_b") && p.at("lokr_w2_b").dim() == 4) {
      const auto& b = p.at("lokr_w2_b");
      w2 = w2.reshape({w2.size(0), b.size(1), b.size(2), b.size(3)});
    }
    while (w1.dim() < w2.dim()) w1 = w1.unsqueeze(-1);
    const int64_t r = p.count("lokr_w2_b") ? p.at("lokr_w2_b").size(0) : p.count("lokr_w1_b") ? p.at("lokr_w1_b").size(0) : 0;
    return {torch::kron(w1, w2), r};
  }
  throw Error(name + ": no LoRA, LoHa or LoKr tensors (expected lora_down/lora_up, lora_A/lora_B, hada_* or lokr_*)");
}
}  // namespace

std::string kohya_unet_name(const std::string& ldm_module, int64_t step) {
  static const std::regex block("(input_blocks|output_blocks)\\.(\\d+)\\.(\\d+)\\.(.+)"), mid("middle_block\\.(\\d+)\\.(.+)");
  auto resnet = [](const std::string& r) {
    for (auto [diffusers, ldm] : kResnetNames)
      if (r == ldm) return std::string(diffusers);
    return r;
  };
  auto s = [](int64_t v) { return std::to_string(v); };
  std::smatch m;
  std::string d;
  if (ldm_module == "input_blocks.0.0") d = "conv_in";
  else if (ldm_module == "out.2") d = "conv_out";
  else if (ldm_module == "time_embed.0") d = "time_embedding.linear_1";
  else if (ldm_module == "time_embed.2") d = "time_embedding.linear_2";
  else if (std::regex_match(ldm_module, m, mid)) {
    const int64_t i = std::stoll(m[1]);
    d = i == 1 ? "mid_block.attentions.0." + m[2].str() : "mid_block.resnets." + s(i / 2) + "." + resnet(m[2]);
  } else if (std::regex_match(ldm_module, m, block)) {
    const int64_t i = std::stoll(m[2]), k = std::stoll(m[3]);
    const std::string rest = m[4];
    if (m[1] == "input_blocks") {
      const int64_t l = (i - 1) / step, j = (i - 1) % step;
      if (i % step == 0) d = "down_blocks." + s(i / step - 1) + ".downsamplers.0.conv";  // rest: "op"
      else d = "down_blocks." + s(l) + (k == 0 ? ".resnets." + s(j) + "." + resnet(rest) : ".attentions." + s(j) + "." + rest);
    } else {
      const int64_t u = i / step, j = i % step;
      if (k == 0) d = "up_blocks." + s(u) + ".resnets." + s(j) + "." + resnet(rest);
      else if (rest == "conv") d = "up_blocks." + s(u) + ".upsamplers.0.conv";
      else d = "up_blocks." + s(u) + ".attentions." + s(j) + "." + rest;
    }
  } else {
    d = ldm_module;  // no diffusers twin: the LDM name (match_lora reads both)
  }
  return "lora_unet_" + flat(d);
}

LoraMatch match_lora(const std::map<std::string, torch::Tensor>& lora, const Shapes& shapes, const std::string& what) {
  // module name -> its tensors by suffix
  std::map<std::string, std::map<std::string, torch::Tensor>> modules;
  for (const auto& [k, t] : lora) {
    bool found = false;
    for (const char* s : kSuffixes) {
      const std::string suf = std::string(".") + s;
      if (k.size() > suf.size() && k.compare(k.size() - suf.size(), suf.size(), suf) == 0) {
        modules[k.substr(0, k.size() - suf.size())][s] = t;
        found = true;
        break;
      }
    }
    if (!found) modules[k];  // reported as unmatched
  }
  std::map<std::string, std::string> by_flat;
  for (const auto& [k, s] : shapes)
    if (k.size() > 7 && k.compare(k.size() - 7, 7, ".weight") == 0) by_flat[flat(k.substr(0, k.size() - 7))] = k.substr(0, k.size() - 7);
  const int64_t step = level_step(shapes);
  LoraMatch out;
  for (const auto& [name, parts] : modules) {
    Target t;
    bool text = false;
    if (parts.empty() || !resolve(name, shapes, by_flat, step, t, text)) {
      out.unmatched.push_back(name);
      continue;
    }
    auto [d, rank] = module_delta(parts, what + ": " + name);
    const double alpha = parts.count("alpha") ? parts.at("alpha").to(torch::kFloat64).item<double>() : static_cast<double>(rank);
    if (rank > 0) d = d * (alpha / static_cast<double>(rank));
    LoraDelta ld{t.key, d, text, -1, t.row_slice};
    auto shape = shapes.at(t.key);
    if (t.row_slice >= 0) shape[0] /= 3;
    int64_t numel = 1;
    for (auto s : shape) numel *= s;
    if (d.numel() != numel && shape.size() == 4 && d.numel() % (shape[0] * shape[2] * shape[3]) == 0) {
      ld.in_channels = d.numel() / (shape[0] * shape[2] * shape[3]);  // 9-channel conv_in takes a 4-channel delta
      shape[1] = ld.in_channels;
      numel = d.numel();
    }
    if (d.numel() != numel)
      throw Error(what + ": " + name + ": delta of " + std::to_string(d.numel()) + " values does not fit " + t.key + " " +
                  c10::str(shapes.at(t.key)));
    ld.delta = d.reshape(shape).contiguous();
    out.deltas.push_back(std::move(ld));
  }
  if (out.deltas.empty())
    throw Error(what + ": matches no weight of this model (" + std::to_string(out.unmatched.size()) +
                " modules, e.g. " + (out.unmatched.empty() ? std::string("none") : out.unmatched.front()) + ")");
  return out;
}

void add_lora_delta(torch::Tensor& weight, const LoraDelta& d, double multiplier) {
  torch::NoGradGuard ng;
  auto part = weight;
  if (d.row_slice >= 0) part = part.narrow(0, d.row_slice * (weight.size(0) / 3), weight.size(0) / 3);
  if (d.in_channels >= 0) part = part.narrow(1, 0, d.in_channels);
  auto delta = d.delta * multiplier;
  part.copy_((part.to(torch::kFloat32) + delta).to(part.scalar_type()));
}

std::pair<std::string, double> parse_lora_arg(const std::string& spec) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos || colon == 0) return {spec, 1.0};
  const std::string num = spec.substr(colon + 1);
  auto m = parse_double(num);
  if (m && std::isfinite(*m)) return {spec.substr(0, colon), *m};
  throw Error("--lora " + spec + ": expected FILE or FILE:MULTIPLIER with a finite number");
}

}  // namespace ldm
