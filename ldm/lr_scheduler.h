// Learning-rate multiplier schedules: the reference's ldm/lr_scheduler.py
// classes (called with the global step) and diffusers' get_scheduler.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torch::optim { class Optimizer; }
namespace ldm {
class Params;

// f(step) -> multiplier of the base learning rate.
class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double operator()(int64_t step) const = 0;
};

struct WarmUpCosineOptions {
  int64_t warm_up_steps = 0, max_decay_steps = 1;
  double lr_min = 0, lr_max = 1, lr_start = 0;
};
// LambdaWarmUpCosineScheduler: linear warm-up lr_start -> lr_max, then a
// cosine to lr_min reached at max_decay_steps and held after it.
class LambdaWarmUpCosineScheduler : public LrSchedule {
 public:
  explicit LambdaWarmUpCosineScheduler(WarmUpCosineOptions o) : o_(o) {}
  double operator()(int64_t n) const override;

 private:
  WarmUpCosineOptions o_;
};

struct CycleOptions {
  std::vector<int64_t> warm_up_steps, cycle_lengths;
  std::vector<double> f_min, f_max, f_start;
};
// LambdaWarmUpCosineScheduler2 (cosine per cycle) and LambdaLinearScheduler
// (linear decay per cycle). A step on a cycle boundary belongs to the
// earlier cycle, as in the reference (n <= cumulative end).
class LambdaWarmUpCosineScheduler2 : public LrSchedule {
 public:
  explicit LambdaWarmUpCosineScheduler2(CycleOptions o);
  double operator()(int64_t n) const override;

 protected:
  // cycle index and the step relative to its start
  std::pair<size_t, int64_t> locate(int64_t n) const;
  CycleOptions o_;
  std::vector<int64_t> cum_;
};
class LambdaLinearScheduler : public LambdaWarmUpCosineScheduler2 {
 public:
  using LambdaWarmUpCosineScheduler2::LambdaWarmUpCosineScheduler2;
  double operator()(int64_t n) const override;
};

// From a scheduler_config's {target, params}.
std::unique_ptr<LrSchedule> make_lr_schedule(const std::string& target, const Params& params);

// diffusers' get_scheduler: constant, constant_with_warmup, linear, cosine,
// cosine_with_restarts, polynomial. Returns the multiplier function.
struct SchedulerArgs {
  int64_t num_warmup_steps = 0, num_training_steps = 0;
  double num_cycles = -1;  // default: 0.5 for cosine (half wave), 1 for cosine_with_restarts
  double power = 1.0, lr_end = 1e-7, lr_init = 1.0;  // polynomial (lr_end relative to lr_init)
};
std::function<double(int64_t)> get_schedule_fn(const std::string& name, const SchedulerArgs& a);

// Sets lr = base_lr * schedule(step) on every param group of `opt`.
class LambdaLR {
 public:
  LambdaLR(torch::optim::Optimizer& opt, std::function<double(int64_t)> fn);
  void step();  // advance one step and apply
  int64_t last_step() const { return step_; }
  void set_step(int64_t s);
  double last_lr() const;

 private:
  void apply();
  torch::optim::Optimizer& opt_;
  std::function<double(int64_t)> fn_;
  std::vector<double> base_;
  int64_t step_ = 0;
};
std::unique_ptr<LambdaLR> get_scheduler(const std::string& name, torch::optim::Optimizer& opt,
                                        int64_t num_warmup_steps, int64_t num_training_steps,
                                        SchedulerArgs extra = {});

}  // namespace ldm
