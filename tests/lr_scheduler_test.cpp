#include "ldm/lr_scheduler.h"

#include <cmath>

#include "ldm/error.h"
#include "ldm/util/config.h"
#include "tests/testing.h"

using namespace ldm;

TEST(LrScheduler, ReferenceFixtures) {
  LDM_REQUIRE_SHARED();
  auto f = test::fixture("lr_schedulers.safetensors");
  auto t = io::load_safetensors(f);
  auto cfg = parse_yaml(io::safetensors_metadata(f).at("config"), "config");
  int checked = 0;
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    std::string name = it->first.as<std::string>();
    auto tc = target_config(it->second, name);
    auto s = make_lr_schedule(tc.target, tc.params);
    auto steps = t.at("output." + name + ".steps");
    auto vals = t.at("output." + name);
    for (int64_t i = 0; i < steps.numel(); ++i) {
      int64_t n = steps[i].item<int64_t>();
      double ref = vals[i].item<double>();
      EXPECT_NEAR((*s)(n), ref, 1e-12) << name << " step " << n;
      ++checked;
    }
  }
  EXPECT_GT(checked, 900);
}

TEST(LrScheduler, PastLastCycleIsError) {
  LambdaLinearScheduler s({{1}, {10}, {0.0}, {1.0}, {0.0}});
  EXPECT_NO_THROW(s(10));
  EXPECT_THROW(s(11), Error);
}

TEST(LrScheduler, UnknownParamNamed) {
  auto n = parse_yaml("warm_up_steps: 1\nlr_min: 0\nlr_max: 1\nlr_start: 0\nmax_decay_steps: 3\nbogus: 1", "x");
  try {
    make_lr_schedule("ldm.lr_scheduler.LambdaWarmUpCosineScheduler", Params(n, "sched.params"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bogus"), std::string::npos);
  }
}

// diffusers formulas, written out independently here.
TEST(LrScheduler, GetSchedulerBoundaries) {
  auto lin = torch::nn::Linear(2, 2);
  torch::optim::AdamW opt(lin->parameters(), torch::optim::AdamWOptions(0.1));
  const int W = 10, T = 110;
  auto lr = [&](const std::string& name, int64_t step, SchedulerArgs a = {}) {
    auto s = get_scheduler(name, opt, W, T, a);
    s->set_step(step);
    double v = s->last_lr();
    s->set_step(0);
    for (auto& g : opt.param_groups()) g.options().set_lr(0.1);
    return v;
  };
  EXPECT_NEAR(lr("constant", 57), 0.1, 1e-15);
  EXPECT_NEAR(lr("constant_with_warmup", 0), 0.0, 1e-15);
  EXPECT_NEAR(lr("constant_with_warmup", 5), 0.05, 1e-15);
  EXPECT_NEAR(lr("constant_with_warmup", 10), 0.1, 1e-15);
  EXPECT_NEAR(lr("linear", 5), 0.05, 1e-15);
  EXPECT_NEAR(lr("linear", 10), 0.1, 1e-15);
  EXPECT_NEAR(lr("linear", 60), 0.05, 1e-15);
  EXPECT_NEAR(lr("linear", 110), 0.0, 1e-15);
  EXPECT_NEAR(lr("linear", 200), 0.0, 1e-15);
  EXPECT_NEAR(lr("cosine", 10), 0.1, 1e-15);
  EXPECT_NEAR(lr("cosine", 60), 0.05, 1e-15);   // half way: cos(pi/2)
  EXPECT_NEAR(lr("cosine", 35), 0.1 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-15);
  EXPECT_NEAR(lr("cosine", 110), 0.0, 1e-15);
  SchedulerArgs two;
  two.num_cycles = 2;
  EXPECT_NEAR(lr("cosine_with_restarts", 60, two), 0.1, 1e-15);  // restart at half
  EXPECT_NEAR(lr("cosine_with_restarts", 35, two), 0.05, 1e-15);
  EXPECT_NEAR(lr("cosine_with_restarts", 110, two), 0.0, 1e-15);
  SchedulerArgs poly;
  poly.power = 2.0;
  poly.lr_end = 0.01;
  EXPECT_NEAR(lr("polynomial", 10, poly), 0.1, 1e-15);
  EXPECT_NEAR(lr("polynomial", 60, poly), (0.1 - 0.01) * 0.25 + 0.01, 1e-15);
  EXPECT_NEAR(lr("polynomial", 110, poly), 0.01, 1e-15);
  EXPECT_NEAR(lr("polynomial", 500, poly), 0.01, 1e-15);
  EXPECT_THROW(get_scheduler("nope", opt, 1, 2), Error);
}
