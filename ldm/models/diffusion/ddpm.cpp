#include "ldm/models/diffusion/ddpm.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/modules.h"

namespace ldm {

namespace {
// extract_into_tensor: a[t] broadcast to x's rank
torch::Tensor extract(const torch::Tensor& a, const torch::Tensor& t, const torch::Tensor& x) {
  auto v = a.to(x.device()).index_select(0, t.to(x.device()).to(torch::kInt64)).to(x.scalar_type());
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = t.size(0);
  return v.view(shape);
}
}  // namespace

LatentDiffusion::LatentDiffusion(LatentDiffusionOptions o, std::shared_ptr<UNetModel> unet,
                                 std::shared_ptr<FirstStage> fs, std::shared_ptr<torch::nn::Module> cs)
    : o_(std::move(o)), unet_(std::move(unet)), first_stage_(std::move(fs)), cond_stage_(std::move(cs)) {
  static const char* keys[] = {"", "concat", "crossattn", "hybrid", "adm"};
  if (std::find(std::begin(keys), std::end(keys), o_.conditioning_key) == std::end(keys))
    throw Error("conditioning_key: expected concat, crossattn, hybrid or adm, got \"" + o_.conditioning_key + "\"");
  sched_ = DiffusionSchedule::make(o_.schedule);
  for (auto& [name, t] : sched_.buffers()) *t = register_buffer(name, *t);
  model_ = register_module("model", std::make_shared<nn::Holder>());
  model_->add("diffusion_model", unet_);
  if (o_.use_ema) model_ema = register_module("model_ema", std::make_shared<LitEma>(*model_));
  if (first_stage_) {
    register_module("first_stage_model", first_stage_);
    for (auto& p : first_stage_->parameters()) p.set_requires_grad(false);  // frozen
  }
  if (cond_stage_) {
    register_module("cond_stage_model", cond_stage_);
    if (!o_.cond_stage_trainable)
      for (auto& p : cond_stage_->parameters()) p.set_requires_grad(false);
  }
  scale_factor = register_buffer("scale_factor", torch::tensor(static_cast<float>(o_.scale_factor)));
  logvar = torch::full({sched_.num_timesteps}, o_.logvar_init);
  if (o_.learn_logvar) logvar = register_parameter("logvar", logvar);
}

std::shared_ptr<LatentDiffusion> LatentDiffusion::from_params(const Params& p, bool is_ddpm) {
  LatentDiffusionOptions o;
  auto& s = o.schedule;
  s.beta_schedule = p.get<std::string>("beta_schedule", "linear");
  s.timesteps = p.get<int64_t>("timesteps", 1000);
  s.linear_start = p.get<double>("linear_start", 1e-4);
  s.linear_end = p.get<double>("linear_end", 2e-2);
  s.cosine_s = p.get<double>("cosine_s", 8e-3);
  s.v_posterior = p.get<double>("v_posterior", 0.0);
  s.parameterization = p.get<std::string>("parameterization", "eps");
  if (p.has("given_betas")) {
    auto b = p.get<std::vector<double>>("given_betas", {});
    s.given_betas = torch::tensor(b, torch::kFloat64);
  }
  o.loss_type = p.get<std::string>("loss_type", "l2");
  if (o.loss_type != "l1" && o.loss_type != "l2") throw Error(p.where() + ".loss_type: expected l1 or l2");
  o.l_simple_weight = p.get<double>("l_simple_weight", 1.0);
  o.original_elbo_weight = p.get<double>("original_elbo_weight", 0.0);
  o.logvar_init = p.get<double>("logvar_init", 0.0);
  o.learn_logvar = p.get<bool>("learn_logvar", false);
  o.snr_gamma = p.get<double>("snr_gamma", 0.0);
  if (o.snr_gamma < 0) throw Error(p.where() + ".snr_gamma: expected >= 0 (0 turns the weighting off)");
  o.clip_denoised = p.get<bool>("clip_denoised", true);
  o.use_ema = p.get<bool>("use_ema", true);
  o.image_size = p.get<int64_t>("image_size", 256);
  o.channels = p.get<int64_t>("channels", 3);
  o.first_stage_key = p.get<std::string>("first_stage_key", "image");
  o.conditioning_key = p.get<std::string>("conditioning_key", "");
  // SD 2.x's ucg_training: {<cond key>: {p: 0.1, val: ""}} (conditioning dropout for guidance)
  if (auto u = p.node("ucg_training"); u && u.IsMap()) {
    for (auto it : u) {
      Params e(it.second, p.where() + ".ucg_training." + it.first.as<std::string>());
      o.ucg_probability = e.get<double>("p", 0.0);
      o.ucg_value = e.get<std::string>("val", "");
      e.check_unused("ucg_training entry");
    }
  }
  // Lightning/bookkeeping keys of the reference with no effect on the model here.
  const auto ckpt = p.get<std::string>("ckpt_path", "");
  const auto ignore_keys = p.get<std::vector<std::string>>("ignore_keys", {});
  p.ignore({"monitor", "log_every_t", "load_only_unet", "use_positional_encodings",
            "num_timesteps_cond", "make_it_fit", "reset_ema", "reset_num_ema_updates", "unet_trainable",
            "scheduler_config", "use_fp16"});
  auto unet = instantiate_as<UNetModel>(p.node("unet_config"), p.where() + ".unet_config");
  if (!unet) throw Error(p.where() + ".unet_config: target must be a UNetModel");
  std::shared_ptr<FirstStage> fs;
  std::shared_ptr<torch::nn::Module> cs;
  if (!is_ddpm) {
    o.scale_factor = p.get<double>("scale_factor", 1.0);
    o.scale_by_std = p.get<bool>("scale_by_std", false);
    o.cond_stage_trainable = p.get<bool>("cond_stage_trainable", false);
    o.cond_stage_key = p.get<std::string>("cond_stage_key", "image");
    p.ignore({"concat_mode", "cond_stage_forward"});
    fs = instantiate_as<FirstStage>(p.node("first_stage_config"), p.where() + ".first_stage_config");
    if (!fs) throw Error(p.where() + ".first_stage_config: target must be a first-stage model (AutoencoderKL, VQModelInterface, IdentityFirstStage)");
    auto cnode = p.node("cond_stage_config");
    if (cnode && cnode.IsScalar()) {
      if (cnode.Scalar() != "__is_unconditional__" && cnode.Scalar() != "__is_first_stage__")
        throw Error(p.where() + ".cond_stage_config: expected a {target, params} or __is_unconditional__/__is_first_stage__");
      o.cond_is_first_stage = cnode.Scalar() == "__is_first_stage__";
    } else if (cnode) {
      cs = instantiate_from_config(cnode, p.where() + ".cond_stage_config");
    }
  }
  p.check_unused(is_ddpm ? "ldm.models.diffusion.ddpm.DDPM" : "ldm.models.diffusion.ddpm.LatentDiffusion");
  auto m = std::make_shared<LatentDiffusion>(o, unet, fs, cs);
  // the reference's init_from_ckpt of the whole model (skipped when a whole checkpoint fills it anyway)
  if (!ckpt.empty() && nn::init_mode() == nn::Init::Random) init_from_ckpt(*m, ckpt, ignore_keys, p.where());
  return m;
}

torch::Tensor LatentDiffusion::apply_model(const torch::Tensor& x, const torch::Tensor& t, const Cond& c) {
  const auto& k = o_.conditioning_key;
  if (k.empty()) return unet_->forward(x, t);
  if (k == "concat") return unet_->forward(torch::cat({x, c.concat}, 1), t);
  if (k == "crossattn") return unet_->forward(x, t, c.crossattn);
  if (k == "hybrid") return unet_->forward(torch::cat({x, c.concat}, 1), t, c.crossattn);
  return unet_->forward(x, t, {}, c.y);  // adm
}

torch::Tensor LatentDiffusion::q_sample(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& n) const {
  return extract(sched_.sqrt_alphas_cumprod, t, x0) * x0 + extract(sched_.sqrt_one_minus_alphas_cumprod, t, x0) * n;
}
torch::Tensor LatentDiffusion::get_v(const torch::Tensor& x0, const torch::Tensor& n, const torch::Tensor& t) const {
  return extract(sched_.sqrt_alphas_cumprod, t, x0) * n - extract(sched_.sqrt_one_minus_alphas_cumprod, t, x0) * x0;
}
torch::Tensor LatentDiffusion::predict_start_from_noise(const torch::Tensor& xt, const torch::Tensor& t,
                                                        const torch::Tensor& eps) const {
  return extract(sched_.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(sched_.sqrt_recipm1_alphas_cumprod, t, xt) * eps;
}
torch::Tensor LatentDiffusion::predict_start_from_v(const torch::Tensor& xt, const torch::Tensor& t,
                                                    const torch::Tensor& v) const {
  return extract(sched_.sqrt_alphas_cumprod, t, xt) * xt - extract(sched_.sqrt_one_minus_alphas_cumprod, t, xt) * v;
}
torch::Tensor LatentDiffusion::predict_eps_from_v(const torch::Tensor& xt, const torch::Tensor& t,
                                                  const torch::Tensor& v) const {
  return extract(sched_.sqrt_alphas_cumprod, t, xt) * v + extract(sched_.sqrt_one_minus_alphas_cumprod, t, xt) * xt;
}

// Min-SNR-gamma: the loss of x0 weighted by min(SNR, gamma), expressed in the
// model's own target: / SNR for eps, / (SNR + 1) for v, as is for x0.
torch::Tensor LatentDiffusion::snr_weight(const torch::Tensor& t) const {
  if (o_.snr_gamma <= 0) return torch::ones({t.size(0)});
  auto ti = t.to(torch::kInt64).cpu();
  auto ac = sched_.alphas_cumprod.to(torch::kFloat64).index_select(0, ti);
  auto snr = ac / (1 - ac);
  auto w = snr.clamp_max(o_.snr_gamma);
  const auto& p = o_.schedule.parameterization;
  if (p == "eps") w = w / snr;
  if (p == "v") w = w / (snr + 1);
  return w.to(torch::kFloat32);
}

LatentDiffusion::Losses LatentDiffusion::p_losses(const torch::Tensor& x0, const Cond& c, const torch::Tensor& t,
                                                  const torch::Tensor& noise_in) {
  Losses L;
  auto noise = noise_in.defined() ? noise_in : torch::randn_like(x0);
  L.x_noisy = q_sample(x0, t, noise);
  L.model_output = apply_model(L.x_noisy, t, c);
  const auto& p = o_.schedule.parameterization;
  L.target = p == "eps" ? noise : p == "x0" ? x0 : get_v(x0, noise, t);
  auto diff = L.model_output - L.target;
  auto per = (o_.loss_type == "l2" ? diff.pow(2) : diff.abs()).mean({1, 2, 3});
  auto lv = logvar.to(x0.device()).index_select(0, t.to(torch::kInt64));
  L.loss_simple = per.mean();
  auto weighted = o_.snr_gamma > 0 ? per * snr_weight(t).to(per.device()) : per;
  auto loss = (weighted / lv.exp() + lv).mean() * o_.l_simple_weight;
  L.loss_vlb = (sched_.lvlb_weights.to(x0.device()).index_select(0, t.to(torch::kInt64)) * per).mean();
  L.loss = loss + o_.original_elbo_weight * L.loss_vlb;
  return L;
}

torch::Tensor LatentDiffusion::training_loss(const torch::Tensor& z, const Cond& c, torch::Generator& gen) {
  auto t = torch::randint(0, sched_.num_timesteps, {z.size(0)}, gen, torch::kInt64).to(z.device());
  auto noise = torch::randn(z.sizes(), gen, z.options().device(gen.device())).to(z.device());
  return p_losses(z, c, t, noise).loss;
}

torch::Tensor LatentDiffusion::get_learned_conditioning(const torch::Tensor& c) {
  if (o_.cond_is_first_stage) return encode_first_stage(c);  // __is_first_stage__: the condition is an image
  if (auto ce = std::dynamic_pointer_cast<ClassEmbedder>(cond_stage_)) return ce->forward(c);
  return c;
}

torch::Tensor LatentDiffusion::unconditional_conditioning(int64_t n) {
  auto ce = std::dynamic_pointer_cast<ClassEmbedder>(cond_stage_);
  if (!ce) throw Error("unconditional conditioning: the cond stage is not a ClassEmbedder; give the negative conditioning explicitly");
  return ce->unconditional(n, ce->embedding->weight.device());
}

torch::Tensor LatentDiffusion::text_conditioning(const std::vector<std::string>& prompts, size_t min_windows) {
  auto te = std::dynamic_pointer_cast<TextEncoder>(cond_stage_);
  if (!te) throw Error("prompts need a text cond stage (FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder); this model has none");
  return te->encode(prompts, min_windows);
}

Cond LatentDiffusion::make_cond(const torch::Tensor& c) const {
  const auto& k = o_.conditioning_key;
  Cond out;
  if (k == "crossattn") out.crossattn = c;
  else if (k == "concat") out.concat = c;
  else if (k == "adm") out.y = c;
  else if (k == "hybrid") out.crossattn = c;  // the reference's c_crossattn; c_concat (mask, masked image) comes from the image
  return out;
}

std::unique_ptr<EmaScope> LatentDiffusion::ema_scope() { return std::make_unique<EmaScope>(model_ema.get(), *model_); }

torch::Tensor LatentDiffusion::encode_first_stage(const torch::Tensor& x, std::optional<torch::Generator> gen) {
  if (!first_stage_) return x;
  const int64_t f = first_stage_->downsample_factor();
  TileOptions t{vae_tiling.tile * f, vae_tiling.overlap * f, f};
  auto enc = [&](const torch::Tensor& p) { return first_stage_->encode_to_latent(p, true, gen); };
  return tiled_apply(enc, x, t) * scale_factor.item<double>();
}

torch::Tensor LatentDiffusion::decode_first_stage(const torch::Tensor& z) {
  if (!first_stage_) return z;
  return tiled_apply([&](const torch::Tensor& l) { return first_stage_->decode(l); }, z / scale_factor.item<double>(),
                     vae_tiling);
}

}  // namespace ldm
