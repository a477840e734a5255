#include "ldm/models/diffusion/schedule.h"

#include "ldm/modules/diffusionmodules/util.h"
#include "ldm/util/config.h"
#include "tests/testing.h"

using namespace ldm;

TEST(ScheduleParity, AllBuffersAndDdim) {
  LDM_REQUIRE_SHARED();
  auto path = test::fixture("schedules.safetensors");
  auto t = io::load_safetensors(path);
  auto cfg = parse_yaml(io::safetensors_metadata(path).at("config"), "config");
  int n = 0;
  for (const char* name : {"sd_linear", "ddpm_linear", "cosine"}) {
    Params p(cfg[name]["params"], name);
    ScheduleOptions o;
    o.beta_schedule = p.get<std::string>("beta_schedule", "linear");
    o.timesteps = p.get<int64_t>("timesteps", 1000);
    o.linear_start = p.get<double>("linear_start", 1e-4);
    o.linear_end = p.get<double>("linear_end", 2e-2);
    o.cosine_s = p.get<double>("cosine_s", 8e-3);
    auto s32 = DiffusionSchedule::make(o);
    auto s64 = DiffusionSchedule::make(o, torch::kFloat64);
    std::string pre = std::string("output.") + name + ".";
    auto bufs32 = s32.buffers(), bufs64 = s64.buffers();
    bufs32.push_back({"lvlb_weights", &s32.lvlb_weights});
    bufs64.push_back({"lvlb_weights", &s64.lvlb_weights});
    for (size_t i = 0; i < bufs32.size(); ++i) {
      test::expect_close(*bufs32[i].second, t.at(pre + bufs32[i].first), 0, 1e-6, pre + bufs32[i].first);
      test::expect_close(*bufs64[i].second, t.at(pre + bufs64[i].first + ".f64"), 0, 1e-12, pre + bufs64[i].first + ".f64");
      n += 2;
    }
    test::expect_close(make_beta_schedule(o.beta_schedule, o.timesteps, o.linear_start, o.linear_end, o.cosine_s),
                       t.at(pre + "make_beta_schedule"), 0, 1e-12, "make_beta_schedule");
  }
  EXPECT_EQ(n, 3 * 13 * 2);
  auto acp = DiffusionSchedule::make(ScheduleOptions{"linear", 1000, 0.00085, 0.012}).alphas_cumprod;
  for (int S : {50, 20, 10}) {
    for (int eta : {0, 1}) {
      auto d = make_ddim_params(acp, S, eta);
      std::string pre = "output.ddim.uniform_" + std::to_string(S) + ".";
      EXPECT_TRUE(torch::equal(torch::tensor(d.timesteps), t.at(pre + "timesteps")));
      std::string e = pre + "eta" + std::to_string(eta) + ".";
      test::expect_close(d.alphas, t.at(e + "alphas"), 0, 1e-6, e + "alphas");
      test::expect_close(d.alphas_prev, t.at(e + "alphas_prev"), 0, 1e-12, e + "alphas_prev");
      test::expect_close(d.sigmas, t.at(e + "sigmas"), 1e-15, 1e-12, e + "sigmas");
      test::expect_close(d.sqrt_one_minus_alphas, t.at(e + "sqrt_one_minus_alphas"), 0, 1e-6, e + "sqrt_one_minus_alphas");
    }
  }
  EXPECT_TRUE(torch::equal(torch::tensor(make_ddim_timesteps("quad", 50, 1000)), t.at("output.ddim.quad_50.timesteps")));
}
