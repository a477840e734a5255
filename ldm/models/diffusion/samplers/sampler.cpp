#include "ldm/models/diffusion/samplers/sampler.h"

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "ldm/error.h"
#include "ldm/models/diffusion/samplers/common.h"

namespace ldm {

namespace {
using Fn = torch::Tensor (*)(Denoiser&, const torch::Tensor&, const SampleOptions&);
struct Entry {
  const char* name;
  const char* a1111;  // the web UI's name, as its infotexts carry it
  Fn fn;
  bool sigma_schedule;  // k-diffusion family: works on sigmas, so SampleOptions::schedule applies
};
const std::vector<Entry>& registry() {
  static const std::vector<Entry> r = {
      {"ddpm", "DDPM", ddpm_sample, false},      {"ddim", "DDIM", ddim_sample, false},
      {"plms", "PLMS", plms_sample, false},      {"dpm_solver++", "DPM-Solver++", dpm_solver_pp_sample, false},
      {"euler", "Euler", euler_sample, true},    {"euler_a", "Euler a", euler_a_sample, true},
      {"heun", "Heun", heun_sample, true},       {"dpm++2m", "DPM++ 2M", dpmpp_2m_sample, true}};
  return r;
}
const Entry* find_sampler(const std::string& name) {
  for (auto& e : registry())
    if (name == e.name) return &e;
  return nullptr;
}
}  // namespace

std::string a1111_sampler_name(const std::string& name) {
  const Entry* e = find_sampler(name);
  return e ? e->a1111 : name;
}

const std::vector<std::string>& sampler_names() {
  static const std::vector<std::string> n = [] {
    std::vector<std::string> v;
    for (auto& e : registry()) v.push_back(e.name);
    return v;
  }();
  return n;
}

bool sampler_uses_sigma_schedule(const std::string& name) {
  const Entry* e = find_sampler(name);
  return e && e->sigma_schedule;
}

torch::Tensor sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  const Entry* entry = find_sampler(o.sampler);
  if (!entry) {
    std::string names;
    for (auto& n : sampler_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error("sampler: unknown \"" + o.sampler + "\" (expected one of " + names + ")");
  }
  if (o.steps < 1) throw Error("steps: expected >= 1, got " + std::to_string(o.steps));
  if (o.schedule != "discrete" && o.schedule != "karras")
    throw Error("schedule: expected discrete or karras, got \"" + o.schedule + "\"");
  if (o.strength <= 0.0 || o.strength > 1.0) throw Error("strength: expected in (0, 1], got " + std::to_string(o.strength));
  if ((o.strength < 1.0 || o.mask.defined()) && !o.x0.defined())
    throw Error("img2img/inpainting: an initial latent (x0) is required with strength < 1 or a mask");
  if (o.x0.defined() && o.x0.sizes() != noise.sizes())
    throw Error("x0: shape must equal the noise's " + c10::str(noise.sizes()) + ", got " + c10::str(o.x0.sizes()));
  torch::NoGradGuard ng;
  return entry->fn(d, noise, o);
}

namespace samplers {

int64_t skipped_steps(int64_t steps, const SampleOptions& o) {
  if (!o.x0.defined() || o.strength >= 1.0) return 0;
  int64_t run = std::max<int64_t>(1, static_cast<int64_t>(steps * o.strength));
  return steps - std::min(run, steps);
}

std::vector<int64_t> timesteps_descending(int64_t T, int64_t steps, const std::string& disc) {
  if (steps > T) throw Error("steps: at most " + std::to_string(T) + " for this schedule, got " + std::to_string(steps));
  if (disc != "uniform" && disc != "quad") throw Error("discretize: expected uniform or quad, got \"" + disc + "\"");
  std::vector<int64_t> ts(steps);
  for (int64_t i = 0; i < steps; ++i) {
    double u = steps == 1 ? 1.0 : 1.0 - static_cast<double>(i) / (steps - 1);  // 1 -> 0
    double f = disc == "quad" ? u * u : u;
    ts[i] = static_cast<int64_t>(std::llround(f * (T - 1)));
  }
  return ts;
}

}  // namespace samplers
}  // namespace ldm
