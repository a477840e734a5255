// Classifier-free guidance restricted to a sigma interval (inside it the
// denoiser equals out_u + s (out_c - out_u), outside it the conditional model
// alone) and with guidance rescale; both computed here from separate UNet calls.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ldm/error.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/models/registry.h"
#include "ldm/util/config.h"
#include "tests/models/tiny_ldm.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
std::shared_ptr<LatentDiffusion> tiny_model() {
  auto m = instantiate_as<LatentDiffusion>(parse_yaml(test::tiny_ldm_yaml(), "guidance"), "guidance");
  m->eval();
  // the reference zero-initialises the output layers: random weights make the
  // conditional and unconditional predictions differ
  torch::NoGradGuard ng;
  for (auto& p : m->unet()->parameters()) p.copy_(torch::randn_like(p) * 0.2);
  return m;
}

double sigma_at(double alpha) { return std::sqrt((1 - alpha) / alpha); }
}  // namespace

TEST(GuidanceInterval, GuidesInsideAndRunsConditionalOutside) {
  torch::manual_seed(3);
  auto m = tiny_model();
  torch::NoGradGuard ng;
  auto c = torch::randn({2, 3, 16}), u = torch::zeros({2, 3, 16});
  auto x = torch::randn({2, 4, 8, 8});
  const double scale = 4.0, lo = 1.0, hi = 5.0;
  GuidedDenoiser d(*m, Cond{c}, Cond{u}, scale);
  d.set_interval(lo, hi);
  auto alphas = m->schedule().alphas_cumprod;
  int inside = 0, outside = 0;
  double spread = 0;  // |out_c - out_u|: guided and unguided must differ for the test to mean anything
  for (int64_t t : {20, 300, 450, 600, 700, 900}) {
    const double a = alphas[t].item<double>(), s = sigma_at(a);
    auto ts = torch::full({2}, t, torch::kInt64);
    auto ec = m->apply_model(x, ts, Cond{c}), eu = m->apply_model(x, ts, Cond{u});
    spread = std::max(spread, (ec - eu).abs().max().item<double>());
    auto want = (s > lo && s <= hi) ? eu + scale * (ec - eu) : ec;
    (s > lo && s <= hi ? inside : outside) += 1;
    test::expect_close(d.eps(x, t), want, 1e-4, 1e-5, "t " + std::to_string(t) + " sigma " + std::to_string(s));
  }
  EXPECT_GT(spread, 1e-3);
  EXPECT_GE(inside, 2);  // the timesteps span both sides of the interval
  EXPECT_GE(outside, 2);
}

TEST(GuidanceInterval, WholeRangeEqualsPlainGuidanceAndEmptyEqualsScaleOne) {
  torch::manual_seed(4);
  auto m = tiny_model();
  torch::NoGradGuard ng;
  auto c = torch::randn({1, 3, 16}), u = torch::zeros({1, 3, 16});
  auto noise = torch::randn({1, 4, 8, 8});
  auto run = [&](double scale, double lo, double hi, bool set) {
    GuidedDenoiser d(*m, Cond{c}, Cond{u}, scale);
    if (set) d.set_interval(lo, hi);
    SampleOptions o;
    o.sampler = "dpm++2m";
    o.schedule = "karras";
    o.steps = 6;
    return sample(d, noise, o);
  };
  const double inf = std::numeric_limits<double>::infinity();
  auto plain = run(3.0, 0, inf, false);
  EXPECT_TRUE(torch::equal(run(3.0, 0, inf, true), plain));
  EXPECT_TRUE(torch::equal(run(3.0, 1e6, 2e6, true), run(1.0, 0, inf, false)));  // no step inside
  EXPECT_GT((run(3.0, 0.5, 5.0, true) - plain).abs().max().item<double>(), 1e-4);
}

TEST(GuidanceInterval, RefusesAnEmptyOrNegativeInterval) {
  auto m = tiny_model();
  GuidedDenoiser d(*m, Cond{torch::zeros({1, 3, 16})}, Cond{torch::zeros({1, 3, 16})}, 2.0);
  EXPECT_THROW(d.set_interval(5.0, 1.0), Error);
  EXPECT_THROW(d.set_interval(-1.0, 1.0), Error);
  EXPECT_THROW(d.set_interval(2.0, 2.0), Error);
  EXPECT_THROW(d.set_interval(std::nan(""), 2.0), Error);
}

// Lin et al. 2024, eq. 15-16, per sample: g = u + s (c - u); r = g std(c) / std(g); out = phi r + (1 - phi) g.
TEST(GuidanceRescale, EqualsTheFormulaPerSample) {
  torch::manual_seed(5);
  auto m = tiny_model();
  torch::NoGradGuard ng;
  auto c = torch::randn({2, 3, 16}), u = torch::zeros({2, 3, 16});
  auto x = torch::randn({2, 4, 8, 8});
  const int64_t t = 500;
  const double scale = 12.0;
  auto ts = torch::full({2}, t, torch::kInt64);
  auto ec = m->apply_model(x, ts, Cond{c}).to(torch::kFloat64), eu = m->apply_model(x, ts, Cond{u}).to(torch::kFloat64);
  auto g = eu + scale * (ec - eu);
  auto plain = GuidedDenoiser(*m, Cond{c}, Cond{u}, scale).eps(x, t);
  for (double phi : {0.0, 0.7, 1.0}) {
    GuidedDenoiser d(*m, Cond{c}, Cond{u}, scale);
    d.set_rescale(phi);
    auto got = d.eps(x, t);
    if (phi == 0) {
      EXPECT_TRUE(torch::equal(got, plain));
      continue;
    }
    for (int64_t i = 0; i < 2; ++i) {  // std written out: sqrt(sum (v - mean)^2 / (n - 1))
      auto sd = [](const torch::Tensor& v) {
        auto f = v.flatten();
        return std::sqrt(((f - f.mean()).pow(2).sum() / (f.numel() - 1)).item<double>());
      };
      const double ratio = sd(ec[i]) / sd(g[i]);
      // the rescale must move the output by far more than the tolerance for the test to mean anything
      EXPECT_GT(std::abs(ratio - 1), 0.01);
      auto want = phi * g[i] * ratio + (1 - phi) * g[i];
      test::expect_close(got[i].to(torch::kFloat64), want, 1e-4, 1e-5, "phi " + std::to_string(phi));
      if (phi == 1) EXPECT_NEAR(sd(got[i].to(torch::kFloat64)), sd(ec[i]), 1e-4 * sd(ec[i]));
    }
  }
}

TEST(GuidanceRescale, RefusesPhiOutsideZeroToOne) {
  auto m = tiny_model();
  GuidedDenoiser d(*m, Cond{torch::zeros({1, 3, 16})}, Cond{torch::zeros({1, 3, 16})}, 2.0);
  EXPECT_THROW(d.set_rescale(-0.1), Error);
  EXPECT_THROW(d.set_rescale(1.5), Error);
  EXPECT_THROW(d.set_rescale(std::nan("")), Error);
  EXPECT_NO_THROW(d.set_rescale(1.0));
}
