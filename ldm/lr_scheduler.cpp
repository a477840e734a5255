#include "ldm/lr_scheduler.h"

#include <cmath>
#include <functional>

#include <torch/optim/optimizer.h>

#include "ldm/error.h"
#include "ldm/util/config.h"
#include "ldm/util/registry.h"

namespace ldm {

double LambdaWarmUpCosineScheduler::operator()(int64_t n) const {
  if (n < o_.warm_up_steps)
    return (o_.lr_max - o_.lr_start) / static_cast<double>(o_.warm_up_steps) * n + o_.lr_start;
  double t = static_cast<double>(n - o_.warm_up_steps) / static_cast<double>(o_.max_decay_steps - o_.warm_up_steps);
  t = std::min(t, 1.0);
  return o_.lr_min + 0.5 * (o_.lr_max - o_.lr_min) * (1 + std::cos(t * M_PI));
}

LambdaWarmUpCosineScheduler2::LambdaWarmUpCosineScheduler2(CycleOptions o) : o_(std::move(o)) {
  size_t n = o_.cycle_lengths.size();
  if (n == 0 || o_.warm_up_steps.size() != n || o_.f_min.size() != n || o_.f_max.size() != n || o_.f_start.size() != n)
    throw Error("lr scheduler: warm_up_steps, f_min, f_max, f_start and cycle_lengths must be lists of one length");
  cum_.push_back(0);
  for (auto c : o_.cycle_lengths) cum_.push_back(cum_.back() + c);
}

std::pair<size_t, int64_t> LambdaWarmUpCosineScheduler2::locate(int64_t n) const {
  for (size_t c = 0; c + 1 < cum_.size(); ++c)
    if (n <= cum_[c + 1]) return {c, n - cum_[c]};
  throw Error("lr scheduler: step " + std::to_string(n) + " is past the last cycle (ends at " +
              std::to_string(cum_.back()) + ")");
}

double LambdaWarmUpCosineScheduler2::operator()(int64_t step) const {
  auto [c, n] = locate(step);
  if (n < o_.warm_up_steps[c])
    return (o_.f_max[c] - o_.f_start[c]) / static_cast<double>(o_.warm_up_steps[c]) * n + o_.f_start[c];
  double t = static_cast<double>(n - o_.warm_up_steps[c]) / static_cast<double>(o_.cycle_lengths[c] - o_.warm_up_steps[c]);
  t = std::min(t, 1.0);
  return o_.f_min[c] + 0.5 * (o_.f_max[c] - o_.f_min[c]) * (1 + std::cos(t * M_PI));
}

double LambdaLinearScheduler::operator()(int64_t step) const {
  auto [c, n] = locate(step);
  if (n < o_.warm_up_steps[c])
    return (o_.f_max[c] - o_.f_start[c]) / static_cast<double>(o_.warm_up_steps[c]) * n + o_.f_start[c];
  // The reference decays over the whole cycle length (warm-up not subtracted).
  return o_.f_min[c] + (o_.f_max[c] - o_.f_min[c]) * static_cast<double>(o_.cycle_lengths[c] - n) /
                           static_cast<double>(o_.cycle_lengths[c]);
}

namespace {
CycleOptions cycle_options(const Params& p) {
  CycleOptions o;
  auto ints = [&](const char* k) { return p.req<std::vector<int64_t>>(k); };
  auto nums = [&](const char* k) { return p.req<std::vector<double>>(k); };
  o.warm_up_steps = ints("warm_up_steps");
  o.cycle_lengths = ints("cycle_lengths");
  o.f_min = nums("f_min");
  o.f_max = nums("f_max");
  o.f_start = nums("f_start");
  return o;
}

using ScheduleFactory = std::function<std::unique_ptr<LrSchedule>(const Params&)>;
const Registry<ScheduleFactory>& schedules() {
  static const Registry<ScheduleFactory> r(
      "LR schedule",
      {{"ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
        [](const Params& p) -> std::unique_ptr<LrSchedule> {
          WarmUpCosineOptions o;
          o.warm_up_steps = p.req<int64_t>("warm_up_steps");
          o.lr_min = p.req<double>("lr_min");
          o.lr_max = p.req<double>("lr_max");
          o.lr_start = p.req<double>("lr_start");
          o.max_decay_steps = p.req<int64_t>("max_decay_steps");
          return std::make_unique<LambdaWarmUpCosineScheduler>(o);
        }},
       {"ldm.lr_scheduler.LambdaWarmUpCosineScheduler2",
        [](const Params& p) -> std::unique_ptr<LrSchedule> {
          return std::make_unique<LambdaWarmUpCosineScheduler2>(cycle_options(p));
        }},
       {"ldm.lr_scheduler.LambdaLinearScheduler", [](const Params& p) -> std::unique_ptr<LrSchedule> {
          return std::make_unique<LambdaLinearScheduler>(cycle_options(p));
        }}});
  return r;
}
}  // namespace

std::unique_ptr<LrSchedule> make_lr_schedule(const std::string& target, const Params& p) {
  p.ignore({"verbosity_interval"});
  auto s = schedules().at(target, p.where())(p);
  p.check_unused(target);
  return s;
}

std::function<double(int64_t)> get_schedule_fn(const std::string& name, const SchedulerArgs& a) {
  const double W = static_cast<double>(a.num_warmup_steps), T = static_cast<double>(a.num_training_steps);
  auto warm = [W](int64_t s) { return static_cast<double>(s) / std::max(1.0, W); };
  if (name == "constant") return [](int64_t) { return 1.0; };
  if (name == "constant_with_warmup")
    return [=](int64_t s) { return s < W ? warm(s) : 1.0; };
  if (name == "linear")
    return [=](int64_t s) { return s < W ? warm(s) : std::max(0.0, (T - s) / std::max(1.0, T - W)); };
  if (name == "cosine")
    return [=](int64_t s) {
      if (s < W) return warm(s);
      double p = (s - W) / std::max(1.0, T - W);
      double cyc = a.num_cycles < 0 ? 0.5 : a.num_cycles;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * cyc * 2.0 * p)));
    };
  if (name == "cosine_with_restarts")
    return [=](int64_t s) {
      if (s < W) return warm(s);
      double p = (s - W) / std::max(1.0, T - W);
      if (p >= 1.0) return 0.0;
      double cyc = a.num_cycles < 0 ? 1.0 : a.num_cycles;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * std::fmod(cyc * p, 1.0))));
    };
  if (name == "polynomial")
    return [=](int64_t s) {
      if (s < W) return warm(s);
      if (s > T) return a.lr_end / a.lr_init;
      double range = a.lr_init - a.lr_end;
      double rem = 1.0 - (s - W) / std::max(1.0, T - W);
      return (range * std::pow(rem, a.power) + a.lr_end) / a.lr_init;
    };
  throw Error("get_scheduler: unknown name \"" + name +
              "\" (accepted: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial)");
}

LambdaLR::LambdaLR(torch::optim::Optimizer& opt, std::function<double(int64_t)> fn)
    : opt_(opt), fn_(std::move(fn)) {
  for (auto& g : opt_.param_groups()) base_.push_back(g.options().get_lr());
  apply();
}

void LambdaLR::apply() {
  double f = fn_(step_);
  auto& groups = opt_.param_groups();
  for (size_t i = 0; i < groups.size() && i < base_.size(); ++i) groups[i].options().set_lr(base_[i] * f);
}

void LambdaLR::step() {
  ++step_;
  apply();
}

void LambdaLR::set_step(int64_t s) {
  step_ = s;
  apply();
}

double LambdaLR::last_lr() const {
  return opt_.param_groups().empty() ? 0.0 : opt_.param_groups()[0].options().get_lr();
}

std::unique_ptr<LambdaLR> get_scheduler(const std::string& name, torch::optim::Optimizer& opt,
                                        int64_t num_warmup_steps, int64_t num_training_steps, SchedulerArgs a) {
  a.num_warmup_steps = num_warmup_steps;
  a.num_training_steps = num_training_steps;
  if (a.lr_init == 1.0 && !opt.param_groups().empty()) a.lr_init = opt.param_groups()[0].options().get_lr();
  return std::make_unique<LambdaLR>(opt, get_schedule_fn(name, a));
}

}  // namespace ldm
