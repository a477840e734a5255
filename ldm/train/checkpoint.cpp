#include "ldm/train/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ldm/error.h"
#include "ldm/io/atomic_file.h"
#include "ldm/io/safetensors.h"
#include "ldm/io/state_dict.h"

namespace fs = std::filesystem;

namespace ldm {

namespace {
std::string impl_key(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

std::map<std::string, std::string> impl_to_name(torch::nn::Module& m) {
  std::map<std::string, std::string> r;
  for (auto& p : m.named_parameters()) r[impl_key(p.value())] = p.key();
  return r;
}

void fsync_path(const fs::path& p) {
  FILE* f = std::fopen(p.c_str(), "rb");
  if (f) {
    fsync(fileno(f));
    std::fclose(f);
  }
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  return s;
}

// Adam and AdamW states have the same fields.
template <class S>
bool put_state(io::TensorMap& out, const std::string& prefix, torch::optim::OptimizerParamState* st) {
  auto* s = dynamic_cast<S*>(st);
  if (!s) return false;
  out[prefix + "exp_avg"] = s->exp_avg().contiguous();
  out[prefix + "exp_avg_sq"] = s->exp_avg_sq().contiguous();
  out[prefix + "step"] = torch::tensor(s->step(), torch::kInt64);
  if (s->max_exp_avg_sq().defined()) out[prefix + "max_exp_avg_sq"] = s->max_exp_avg_sq().contiguous();
  return true;
}
template <class S>
std::unique_ptr<torch::optim::OptimizerParamState> make_state(const io::TensorMap& in, const std::string& prefix) {
  auto s = std::make_unique<S>();
  s->exp_avg(in.at(prefix + "exp_avg").clone());
  s->exp_avg_sq(in.at(prefix + "exp_avg_sq").clone());
  s->step(in.at(prefix + "step").item<int64_t>());
  if (in.count(prefix + "max_exp_avg_sq")) s->max_exp_avg_sq(in.at(prefix + "max_exp_avg_sq").clone());
  return s;
}
}  // namespace

std::string save_checkpoint(const std::string& run_dir, torch::nn::Module& model, const std::vector<NamedOptimizer>& opts,
                            const TrainState& st, const std::string& config_yaml, int keep) {
  fs::path ck = fs::path(run_dir) / "checkpoints";
  fs::create_directories(ck);
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld", (long long)st.step);
  fs::path final_dir = ck / name, tmp = ck / (std::string(".tmp-") + name);
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  io::TensorMap weights;
  for (auto& [k, v] : state_dict(model)) weights[k] = v.contiguous();
  io::save_safetensors((tmp / "model.safetensors").string(), weights);

  io::TensorMap ostate;
  auto names = impl_to_name(model);
  for (auto& no : opts) {
    auto& state = no.opt->state();
    for (size_t g = 0; g < no.opt->param_groups().size(); ++g) {
      for (auto& p : no.opt->param_groups()[g].params()) {
        auto it = state.find(impl_key(p));
        if (it == state.end()) continue;
        auto nit = names.find(impl_key(p));
        if (nit == names.end()) throw Error("checkpoint: optimizer " + no.name + " holds a parameter the model does not name");
        std::string prefix = no.name + "." + nit->second + ".";
        if (!put_state<torch::optim::AdamWParamState>(ostate, prefix, it->second.get()) &&
            !put_state<torch::optim::AdamParamState>(ostate, prefix, it->second.get()))
          throw Error("checkpoint: unsupported optimizer state (Adam and AdamW are)");
      }
    }
  }
  if (st.rng.defined()) ostate["rng"] = st.rng.contiguous();
  io::save_safetensors((tmp / "optimizer.safetensors").string(), ostate);

  nlohmann::json j;
  j["step"] = st.step;
  j["batches"] = st.batches;
  j["epoch"] = st.epoch;
  j["extra"] = st.extra;
  for (auto& no : opts) j["lr"][no.name] = no.opt->param_groups().empty() ? 0.0 : no.opt->param_groups()[0].options().get_lr();
  std::string js = j.dump(2);
  write_file_atomic((tmp / "state.json").string(), js.data(), js.size());
  write_file_atomic((tmp / "config.yaml").string(), config_yaml.data(), config_yaml.size());
  for (auto& f : fs::directory_iterator(tmp)) fsync_path(f.path());

  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  std::string latest = std::string(name) + "\n";
  write_file_atomic((ck / "latest").string(), latest.data(), latest.size());

  // keep `keep` checkpoints: the one `latest` now names, and the newest others
  std::vector<fs::path> others;
  for (auto& e : fs::directory_iterator(ck))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0 && e.path() != final_dir)
      others.push_back(e.path());
  std::sort(others.begin(), others.end());
  const size_t keep_others = keep > 1 ? static_cast<size_t>(keep - 1) : 0;
  for (size_t i = 0; i + keep_others < others.size(); ++i) fs::remove_all(others[i]);
  return final_dir.string();
}

TrainState load_checkpoint(const std::string& dir, torch::nn::Module& model, const std::vector<NamedOptimizer>& opts) {
  fs::path d(dir);
  auto w = io::load_safetensors((d / "model.safetensors").string());
  load_state_dict(model, w, true, (d / "model.safetensors").string());
  auto os = io::load_safetensors((d / "optimizer.safetensors").string());
  auto names = impl_to_name(model);
  for (auto& no : opts) {
    auto& state = no.opt->state();
    state.clear();
    for (auto& g : no.opt->param_groups())
      for (auto& p : g.params()) {
        std::string prefix = no.name + "." + names.at(impl_key(p)) + ".";
        if (!os.count(prefix + "exp_avg")) continue;  // never stepped
        if (dynamic_cast<torch::optim::AdamW*>(no.opt))
          state[impl_key(p)] = make_state<torch::optim::AdamWParamState>(os, prefix);
        else
          state[impl_key(p)] = make_state<torch::optim::AdamParamState>(os, prefix);
      }
  }
  TrainState st;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(d / "state.json"));
    st.step = j.at("step").get<int64_t>();
    st.batches = j.at("batches").get<int64_t>();
    st.epoch = j.at("epoch").get<int64_t>();
    if (j.contains("extra")) st.extra = j["extra"].get<std::map<std::string, double>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error((d / "state.json").string() + ": " + e.what());
  }
  if (os.count("rng")) st.rng = os.at("rng");
  return st;
}

}  // namespace ldm
