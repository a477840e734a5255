#include "ldm/io/state_dict.h"

#include <filesystem>
#include <set>

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"

namespace ldm {

std::string LoadReport::summary(size_t max_names) const {
  std::string s;
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    s += (s.empty() ? "" : "; ") + std::to_string(v.size()) + " " + what + ": ";
    for (size_t i = 0; i < v.size() && i < max_names; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > max_names) s += ", ...";
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("shape mismatches", mismatched);
  return s;
}

std::map<std::string, torch::Tensor> state_dict(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value();
  return out;
}

LoadReport load_state_dict(torch::nn::Module& m, const std::map<std::string, torch::Tensor>& tensors, bool strict,
                           const std::string& what, bool alias) {
  LoadReport r;
  auto targets = state_dict(m);
  torch::NoGradGuard ng;
  for (auto& [name, dst] : targets) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      r.missing.push_back(name);
      continue;
    }
    if (it->second.sizes() != dst.sizes()) {
      std::ostringstream o;
      o << name << " (file " << it->second.sizes() << ", model " << dst.sizes() << ")";
      r.mismatched.push_back(o.str());
      continue;
    }
  }
  for (auto& [name, t] : tensors)
    if (!targets.count(name)) r.unexpected.push_back(name);
  if (strict && !r.ok()) throw Error(what + ": state_dict does not match the model: " + r.summary());
  for (auto& [name, dst] : targets) {
    auto it = tensors.find(name);
    if (it == tensors.end() || it->second.sizes() != dst.sizes()) continue;
    if (dst.device().is_meta()) continue;
    const auto& src = it->second;
    // alias: the parameter takes the file's (mapped) storage, no copy; the
    // mapping is private, so later in-place writes never reach the file
    if (alias && src.scalar_type() == dst.scalar_type() && src.device() == dst.device() && src.is_contiguous())
      dst.set_data(src);
    else
      dst.copy_(src);
  }
  return r;
}

std::map<std::string, torch::Tensor> strip_prefix(const std::map<std::string, torch::Tensor>& t, const std::string& prefix) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [k, v] : t)
    if (k.compare(0, prefix.size(), prefix) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

void init_from_ckpt(torch::nn::Module& m, const std::string& path, const std::vector<std::string>& ignore_keys,
                    const std::string& where) {
  if (!std::filesystem::exists(path))
    throw Error(where + ".ckpt_path: " + path + " does not exist" +
                (std::filesystem::path(path).is_relative()
                     ? " (relative paths are resolved against the working directory, " +
                           std::filesystem::current_path().string() + ")"
                     : std::string()));
  const std::string file = weights_file(path);
  auto w = io::load_weights(file).tensors;
  for (auto it = w.begin(); it != w.end();) {
    bool drop = false;
    for (auto& k : ignore_keys) drop = drop || it->first.rfind(k, 0) == 0;
    it = drop ? w.erase(it) : std::next(it);
  }
  auto rep = load_state_dict(m, w, false, file);
  std::set<std::string> params;
  for (auto& p : m.named_parameters()) params.insert(p.key());
  LoadReport bad;
  bad.mismatched = rep.mismatched;
  for (auto& k : rep.missing)
    if (params.count(k)) bad.missing.push_back(k);
  if (!bad.ok()) throw Error(where + ".ckpt_path " + file + ": " + bad.summary());
}

}  // namespace ldm
