// Samplers against a denoiser known in closed form: data x0 ~ N(mu, s^2) per
// dimension, so x_t ~ N(sqrt(a) mu, a s^2 + 1 - a) and the exact
// eps(x_t) = E[n | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
// Each sampler, fed that eps, must reproduce the exact result as steps grow.
// The exact result: the probability-flow ODE keeps z = (x_t - sqrt(a) mu) /
// sqrt(a s^2 + 1 - a) fixed, so the sampler's start distribution (N(0,1),
// not exactly q(x_T)) maps to a known Gaussian at its end level.
#include <cmath>
#include <cstdio>
#include <map>

#include "ldm/models/diffusion/samplers/k_diffusion.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/models/diffusion/schedule.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
class GaussianDenoiser : public Denoiser {
 public:
  GaussianDenoiser(torch::Tensor mu, torch::Tensor s) : mu_(std::move(mu)), s_(std::move(s)) {
    acp_ = DiffusionSchedule::make(ScheduleOptions{}).alphas_cumprod;
  }
  using Denoiser::eps;
  torch::Tensor eps(const torch::Tensor& x, double, double a) override {
    ++calls;
    return std::sqrt(1 - a) * (x - std::sqrt(a) * mu_) / (a * s_ * s_ + 1 - a);
  }
  torch::Tensor alphas_cumprod() const override { return acp_; }

 private:
  torch::Tensor mu_, s_, acp_;
};

const int64_t N = 20000;
torch::Tensor mu() { return torch::tensor({0.5, -0.5, 1.0, 0.0}, torch::kFloat64).view({1, 4, 1, 1}); }
torch::Tensor sd() { return torch::tensor({0.5, 1.0, 1.5, 0.2}, torch::kFloat64).view({1, 4, 1, 1}); }

// Standard normal noise, standardised per dimension so that deterministic
// samplers (linear maps here) carry no Monte-Carlo error in mean or std.
torch::Tensor noise() {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(7);
  auto n = torch::randn({N, 4, 1, 1}, g, torch::kFloat64);
  return (n - n.mean(0, true)) / n.std(0, true, true);
}

struct Err {
  double mean, std;
};

// Mean and std the exact ODE gives from a start at cumulative alpha a0 with
// x ~ N(0, std0^2) to the end level a1.
std::pair<torch::Tensor, torch::Tensor> exact(double a0, double std0, double a1) {
  auto v = [&](double a) { return (a * sd() * sd() + 1 - a).sqrt(); };
  auto z_mean = -std::sqrt(a0) * mu() / v(a0), z_std = std0 / v(a0);
  return {std::sqrt(a1) * mu() + v(a1) * z_mean, v(a1) * z_std};
}

// Start and end levels of each sampler (see the sampler files).
std::pair<torch::Tensor, torch::Tensor> truth(const std::string& sampler, int64_t steps, bool deterministic) {
  if (!deterministic) return {mu(), sd()};  // reverse SDEs: the data (prior mismatch inside tolerance)
  auto acp = DiffusionSchedule::make(ScheduleOptions{}).alphas_cumprod.to(torch::kFloat64);
  const double aT = acp[-1].item<double>(), a0 = acp[0].item<double>();
  if (sampler == "ddim" || sampler == "plms") {  // DDIM timesteps start at T - T/steps + 1, end at abar_0
    auto p = make_ddim_params(acp.to(torch::kFloat32), steps, 0.0);
    return exact(acp[p.timesteps.back()].item<double>(), 1.0, a0);
  }
  if (sampler == "dpm_solver++") return exact(aT, 1.0, a0);
  return exact(aT, std::sqrt(1 - aT), 1.0);  // k-samplers: x = sigma_max n in VE, end at sigma = 0
}

Err run(const std::string& sampler, int64_t steps, const std::string& schedule = "discrete", double eta = 0) {
  const bool deterministic = sampler != "ddpm" && sampler != "euler_a" && eta == 0;
  GaussianDenoiser d(mu(), sd());
  SampleOptions o;
  o.sampler = sampler;
  o.steps = steps;
  o.schedule = schedule;
  o.eta = eta;
  o.generator = torch::make_generator<at::CPUGeneratorImpl>(11);
  auto x = sample(d, noise(), o);
  auto [m, s] = truth(sampler, steps, deterministic);
  return {(x.mean(0, true) - m).abs().max().item<double>(), (x.std(0, true, true) - s).abs().max().item<double>()};
}
}  // namespace

// Deterministic samplers: error falls with steps and ends small.
TEST(SamplerConvergence, DeterministicSamplersConverge) {
  struct Case {
    std::string name, schedule;
    double tol_at_100;
  };
  for (const Case& c : {Case{"ddim", "discrete", 0.03}, Case{"plms", "discrete", 0.01},
                        Case{"dpm_solver++", "discrete", 0.01}, Case{"euler", "discrete", 0.03},
                        Case{"euler", "karras", 0.04}, Case{"heun", "discrete", 0.01},
                        Case{"heun", "karras", 0.01}, Case{"dpm++2m", "discrete", 0.01},
                        Case{"dpm++2m", "karras", 0.01}}) {
    std::string line = c.name + " (" + c.schedule + "): max |mean err| / |std err| at steps";
    double first = 0, last = 0;
    for (int64_t steps : {5, 10, 20, 50, 100}) {
      auto e = run(c.name, steps, c.schedule);
      double err = std::max(e.mean, e.std);
      if (steps == 5) first = err;
      last = err;
      char buf[96];
      std::snprintf(buf, sizeof buf, "  %ld: %.4f/%.4f", (long)steps, e.mean, e.std);
      line += buf;
    }
    std::cout << line << "\n";
    EXPECT_LT(last, c.tol_at_100) << c.name << " " << c.schedule;
    EXPECT_LT(last, first) << c.name << " " << c.schedule << " does not improve with steps";
  }
}

// Stochastic samplers, against the data itself: the injected noise adds
// Monte-Carlo error (s / sqrt(N) = 0.01 for s = 1.5) and the prior mismatch
// sqrt(abar_T) s mu = 0.04.
TEST(SamplerConvergence, StochasticSamplersConverge) {
  struct Case {
    std::string name;
    double eta;
    int64_t steps;
  };
  for (const Case& c : {Case{"ddpm", 0, 1000}, Case{"ddpm", 0, 100}, Case{"ddim", 1.0, 100},
                        Case{"euler_a", 0, 100}}) {
    auto e = run(c.name, c.steps, "discrete", c.eta);
    std::printf("%s (eta %.0f) %ld steps: max |mean err| %.4f, |std err| %.4f\n", c.name.c_str(), c.eta,
                (long)c.steps, e.mean, e.std);
    EXPECT_LT(e.mean, 0.07) << c.name;
    EXPECT_LT(e.std, 0.07) << c.name;
  }
}

// k-diffusion sigma mapping: t -> sigma -> t round-trips and the Karras
// schedule spans [sigma_min, sigma_max] then 0.
TEST(SigmaSchedule, RoundTripAndEnds) {
  SigmaSchedule s(DiffusionSchedule::make(ScheduleOptions{}).alphas_cumprod);
  for (double t : {0.0, 1.5, 10.0, 499.25, 998.0, 999.0}) EXPECT_NEAR(s.sigma_to_t(s.t_to_sigma(t)), t, 1e-6) << t;
  auto k = s.sigmas(10, "karras");
  ASSERT_EQ(k.size(), 11u);
  EXPECT_NEAR(k.front(), s.sigma_max(), 1e-9);
  EXPECT_NEAR(k[9], s.sigma_min(), 1e-9);
  EXPECT_EQ(k.back(), 0.0);
  auto dsc = s.sigmas(10, "discrete");
  EXPECT_NEAR(dsc.front(), s.sigma_max(), 1e-9);
  EXPECT_NEAR(dsc[9], s.sigma_min(), 1e-9);
  for (size_t i = 1; i < dsc.size(); ++i) EXPECT_LT(dsc[i], dsc[i - 1]);
}

TEST(Sampler, UnknownNameIsAClearError) {
  GaussianDenoiser d(mu(), sd());
  SampleOptions o;
  o.sampler = "lms";
  try {
    sample(d, noise(), o);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("dpm++2m"), std::string::npos) << e.what();
  }
}

// img2img runs the last int(steps * strength) steps; inpainting keeps the
// known region exactly and samples the rest from the right distribution.
TEST(Sampler, Img2ImgAndInpaintingByBlending) {
  auto x0 = torch::randn({N, 4, 1, 1}, torch::kFloat64) * sd() + mu();
  for (const std::string name : sampler_names()) {
    GaussianDenoiser d(mu(), sd());
    SampleOptions o;
    o.sampler = name;
    o.steps = 20;
    o.strength = 0.5;
    o.x0 = x0;
    o.generator = torch::make_generator<at::CPUGeneratorImpl>(3);
    sample(d, noise(), o);
    int64_t per_step = name == "heun" ? 2 : 1;
    int64_t expect = name == "plms" ? 11 : name == "heun" ? 10 * 2 - 1 : 10 * per_step;
    EXPECT_EQ(d.calls, expect) << name;
  }
  for (const std::string name : {"ddim", "euler_a", "dpm++2m"}) {
    GaussianDenoiser d(mu(), sd());
    SampleOptions o;
    o.sampler = name;
    o.steps = 50;
    o.x0 = x0;
    o.mask = torch::tensor({1.0, 0.0, 1.0, 0.0}, torch::kFloat64).view({1, 4, 1, 1});
    o.generator = torch::make_generator<at::CPUGeneratorImpl>(5);
    auto x = sample(d, noise(), o);
    EXPECT_EQ(test::max_abs_err(x.select(1, 0), x0.select(1, 0)), 0.0) << name;
    EXPECT_EQ(test::max_abs_err(x.select(1, 2), x0.select(1, 2)), 0.0) << name;
    auto m = x.mean(0, true), s = x.std(0, true, true);
    for (int64_t c : {1, 3}) {  // the generated dims follow the data
      EXPECT_NEAR(m[0][c][0][0].item<double>(), mu()[0][c][0][0].item<double>(), 0.07) << name << " dim " << c;
      EXPECT_NEAR(s[0][c][0][0].item<double>(), sd()[0][c][0][0].item<double>(), 0.07) << name << " dim " << c;
    }
  }
}
