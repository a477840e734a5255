// Run directories: existing runs refused or started over, pruning, resume
// without repeated metrics, config mistakes before step 1, the CLI's names
// and the launcher's signals.
#include "ldm/train/trainer.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "ldm/data/dataset.h"
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/losses/lpips.h"
#include "ldm/io/safetensors.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/metrics.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/state_dict.h"
#include "tests/testing.h"
#include "tests/train/train_helpers.h"

using namespace ldm;
using namespace ldm::train_test;
namespace fs = std::filesystem;

namespace {
std::string expect_train_error(const YAML::Node& cfg, const TrainOptions& o) {
  try {
    train(cfg, o);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error";
  return "";
}
}  // namespace

// A new run on an existing run directory is refused (it used to interleave
// checkpoints, prune the new latest and duplicate metrics); --force starts over.
TEST(RunDir, ExistingRunIsRefusedForceStartsOver) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  auto o = quiet(dir + "/run");
  train(cfg, o);  // 6 steps, checkpoints 3 and 6
  o.max_steps = 3;
  auto msg = expect_train_error(cfg, o);
  EXPECT_NE(msg.find("already holds a run"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--resume " + dir + "/run"), std::string::npos) << msg;
  EXPECT_EQ(latest_checkpoint(dir + "/run"), dir + "/run/checkpoints/step-000000006");  // untouched
  o.force = true;
  train(cfg, o);
  EXPECT_EQ(latest_checkpoint(dir + "/run"), dir + "/run/checkpoints/step-000000003");
  EXPECT_EQ(csv_column(dir + "/run/metrics.csv", "step"), (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_FALSE(fs::exists(dir + "/run/checkpoints/step-000000006"));
}

// Pruning keeps what `latest` names even when older-named ones sort after it.
TEST(RunDir, PruningNeverDeletesLatest) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  auto o = quiet(dir + "/run");
  train(cfg, o);  // step-3 and step-6 kept
  fs::create_directories(dir + "/run/checkpoints/step-000000009");  // a stray newer name (an older run's)
  fs::copy(dir + "/run/checkpoints/step-000000006", dir + "/run/checkpoints/step-000000009", fs::copy_options::recursive);
  fs::remove_all(dir + "/run/checkpoints/step-000000006");
  // rewind: latest names step 3, resume to 4 (checkpoint_every 1, keep 2)
  std::ofstream(dir + "/run/checkpoints/latest") << "step-000000003\n";
  apply_overrides(cfg, {"training.checkpoint_every=1"});
  o.resume = dir + "/run";
  o.max_steps = 4;
  train(cfg, o);
  EXPECT_EQ(latest_checkpoint(dir + "/run"), dir + "/run/checkpoints/step-000000004");
}

// A run killed after logging steps its last checkpoint does not hold: the
// resumed run's metrics continue from the checkpoint without repeated steps.
TEST(RunDir, ResumeDoesNotRepeatMetricRows) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  apply_overrides(cfg, {"training.checkpoint_every=2"});
  auto o = quiet(dir + "/run");
  o.max_steps = 5;  // rows 1..5, checkpoints 4 and 5
  train(cfg, o);
  // as if killed after step 5 was logged but before its checkpoint
  fs::remove_all(dir + "/run/checkpoints/step-000000005");
  std::ofstream(dir + "/run/checkpoints/latest") << "step-000000004\n";
  o.resume = dir + "/run";
  o.max_steps = 6;
  train(cfg, o);
  EXPECT_EQ(csv_column(dir + "/run/metrics.csv", "step"), (std::vector<std::string>{"1", "2", "3", "4", "5", "6"}));
  // TensorBoard is told to drop the old file's steps from 5 on (SessionLog START at step 5)
  bool restart = false;
  for (auto& e : fs::directory_iterator(dir + "/run/tensorboard"))
    restart = restart || slurp(e.path().string()).find(tf_event_session_start(0, 5).substr(9)) != std::string::npos;  // after wall_time
  EXPECT_TRUE(restart);
}

// Everything the run will use is checked before step 1: strict lightning and
// top-level sections, the preview sampler, fp16 on the CPU.
TEST(RunDir, ConfigMistakesStopBeforeTheFirstStep) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  const std::pair<std::string, std::string> cases[] = {
      {"lightning.trainer.max_stepz=5", "lightning.trainer: unknown key \"max_stepz\""},
      {"lightning.trainer.precison=bf16", "lightning.trainer: unknown key \"precison\""},
      {"trainer.max_steps=5", "config: unknown section \"trainer\""},
      {"lightning.trainerr.max_steps=5", "lightning: unknown key \"trainerr\""},
      {"training.sampler=euler_ancestral", "training.sampler/sample_steps (the preview images): sampler: unknown"},
      {"training.sample_steps=3", "the nearest counts that work: 2 or 4"},
      {"lightning.trainer.precision=16", "16 (fp16 autocast) needs a GPU; on the CPU use bf16"},
      {"model.base_learning_rate=abc", "model.base_learning_rate: expected a number, got \"abc\""},
      {"lightning.trainer.max_steps=many", "lightning.trainer.max_steps: expected an integer, got \"many\""},
      {"model.params.unet_config.params.disable_self_attentions=[maybe]",
       "disable_self_attentions: expected a list of true/false, got a list"},
  };
  for (const auto& [kv, want] : cases) {
    auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
    apply_overrides(cfg, {"training.checkpoint_every=1", "model.params.timesteps=1000", kv});
    auto msg = expect_train_error(cfg, quiet(dir + "/r"));
    EXPECT_NE(msg.find(want), std::string::npos) << kv << ": " << msg;
    EXPECT_FALSE(fs::exists(dir + "/r/checkpoints")) << kv;
  }
  // Lightning's own arguments that do nothing here are still accepted
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  apply_overrides(cfg, {"lightning.trainer.benchmark=true", "lightning.trainer.max_steps=1"});
  EXPECT_EQ(train(cfg, quiet(dir + "/ok")).steps, 1);
}

// The CLI: a relative ckpt_path that is missing names the key and the config
// file; a directory given as the config; --resume without -o continues in
// the run it resumes.
TEST(RunDir, CliNamesConfigKeysAndResumesInPlace) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  std::ofstream(dir + "/ldm.yaml") << ldm_config(folder, "outputs/nowhere/autoencoder");
  auto r = test::run_command(std::string(LDM_BINARY) + " train " + dir + "/ldm.yaml -q -o " + dir + "/x");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find(dir + "/ldm.yaml: model.params.first_stage_config.params.ckpt_path: outputs/nowhere/autoencoder "
                             "does not exist (relative paths are resolved against the working directory"),
            std::string::npos)
      << r.out;
  r = test::run_command(std::string(LDM_BINARY) + " train " + dir + " -q");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find(dir + ": is a directory; expected a config YAML file"), std::string::npos) << r.out;

  std::ofstream(dir + "/cfg.yaml") << ldm_config(folder, "");
  const std::string train_cmd = std::string(LDM_BINARY) + " train " + dir + "/cfg.yaml -q";
  ASSERT_EQ(test::run_command(train_cmd + " -o " + dir + "/run --max-steps 3").rc, 0);
  r = test::run_command("cd " + dir + " && " + train_cmd + " --resume " + dir + "/run/checkpoints/step-000000003 --max-steps 4");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(latest_checkpoint(dir + "/run"), dir + "/run/checkpoints/step-000000004");
  EXPECT_FALSE(fs::exists(dir + "/outputs/train"));
  r = test::run_command(train_cmd + " -o " + dir + "/run --max-steps 5");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
}

// SIGTERM to the --nproc launcher stops its ranks; SIGKILL to it ends them too
// (they die with their parent). The run header is printed once, not per rank.
TEST(RunDir, LauncherSignalsReachTheRanks) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  std::ofstream(dir + "/cfg.yaml") << ldm_config(folder, "");
  for (int sig : {SIGTERM, SIGKILL}) {
    const std::string run = dir + "/run" + std::to_string(sig), log = dir + "/log" + std::to_string(sig) + ".txt";
    pid_t pid = fork();
    if (pid == 0) {
      freopen(log.c_str(), "w", stderr);
      execl(LDM_BINARY, LDM_BINARY, "train", (dir + "/cfg.yaml").c_str(), "-o", run.c_str(), "--nproc", "2",
            "training.checkpoint_every=1", "lightning.trainer.max_steps=100000", (char*)nullptr);
      _exit(127);
    }
    for (int i = 0; i < 600 && !fs::exists(run + "/checkpoints/latest"); ++i) usleep(100000);
    ASSERT_TRUE(fs::exists(run + "/checkpoints/latest")) << slurp(log);
    std::vector<pid_t> ranks;  // the launcher's children
    for (auto& e : fs::directory_iterator("/proc")) {
      std::ifstream st(e.path() / "stat");
      std::string p, comm, state;
      pid_t ppid = 0;
      if (st >> p >> comm >> state >> ppid && ppid == pid) ranks.push_back(std::stoi(p));
    }
    ASSERT_EQ(ranks.size(), 2u);
    kill(pid, sig);
    int st = 0;
    waitpid(pid, &st, 0);
    if (sig == SIGTERM) {
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM) << st;
      EXPECT_EQ(slurp(log).find("training "), slurp(log).rfind("training ")) << "header once: " << slurp(log);
    }
    auto alive = [](pid_t p) {  // gone, or a zombie waiting for init
      std::ifstream s("/proc/" + std::to_string(p) + "/stat");
      std::string pid_s, comm, state;
      return (s >> pid_s >> comm >> state) && state != "Z";
    };
    bool gone = false;
    for (int i = 0; i < 300 && !gone; ++i) {
      gone = !alive(ranks[0]) && !alive(ranks[1]);
      if (!gone) usleep(100000);
    }
    EXPECT_TRUE(gone) << "signal " << sig << ": ranks still running";
    for (pid_t p : ranks) kill(p, SIGKILL);
  }
}
