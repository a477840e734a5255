// ldm info FILE: what a config or weights file holds.
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

namespace {
std::string human(int64_t n) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(2);
  if (n >= 1000000000) o << n / 1e9 << "B";
  else if (n >= 1000000) o << n / 1e6 << "M";
  else if (n >= 1000) o << n / 1e3 << "K";
  else o << n;
  return o.str();
}

void info_weights(const std::string& path) {
  auto ck = io::load_weights(path);
  std::map<std::string, int> dtypes;
  std::map<std::string, int64_t> groups;
  std::map<std::string, int> group_tensors;
  static const char* kGroups[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema."};
  for (const auto& [k, t] : ck.tensors) {
    dtypes[c10::toString(t.scalar_type())]++;
    std::string g = "(other)";
    for (const char* p : kGroups)
      if (k.rfind(p, 0) == 0) g = std::string(p).substr(0, std::string(p).size() - 1);
    groups[g] += t.numel();
    group_tensors[g]++;
  }
  std::cout << path << "\n  tensors: " << ck.tensors.size() << "\n  dtypes:";
  for (auto& [d, n] : dtypes) std::cout << " " << d << " x" << n;
  std::cout << "\n  parameters per top-level module:\n";
  for (auto& [g, n] : groups)
    std::cout << "    " << std::left << std::setw(24) << g << std::right << std::setw(14) << n << "  (" << human(n)
              << ", " << group_tensors[g] << " tensors)\n";
  if (ck.global_step >= 0) std::cout << "  global_step: " << ck.global_step << "\n";
  if (ck.epoch >= 0) std::cout << "  epoch: " << ck.epoch << "\n";
  for (auto& [k, v] : ck.metadata) std::cout << "  metadata " << k << ": " << (v.size() > 200 ? v.substr(0, 200) + "..." : v) << "\n";
}
}  // namespace

void add_info(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "info", "describe a weights file (.ckpt/.safetensors), an ldm train run directory, or a config (file or built-in name)");
  auto file = std::make_shared<std::string>();
  sub->add_option("FILE", *file, "weights, run directory, config file or built-in config name")->required();
  sub->callback([file] {
    const std::string& f = *file;
    bool yaml = f.size() > 5 && (f.substr(f.size() - 5) == ".yaml" || f.substr(f.size() - 4) == ".yml");
    if (yaml) {
      info_config(f);
    } else if (std::filesystem::is_directory(f)) {  // a run: its newest checkpoint and its config
      info_weights(weights_file(f));
      if (auto c = run_config_of(f); !c.empty()) info_config(c);
    } else {
      info_weights(f);
    }
  });
}

}  // namespace ldm::cli
