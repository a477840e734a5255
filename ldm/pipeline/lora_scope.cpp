#include "ldm/pipeline/lora_scope.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <regex>
#include <sstream>

#include "ldm/error.h"
#include "ldm/util/number.h"
#include "ldm/io/ckpt.h"
#include "ldm/models/lora.h"

namespace ldm::pipeline {

namespace fs = std::filesystem;

namespace {
std::string resolve_name(const std::string& name, const std::string& dir) {
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos || name == "." ||
      name.find("..") != std::string::npos)
    throw Error("<lora:" + name + ">: expected a file name without directories");
  if (dir.empty()) throw Error("<lora:" + name + ">: no LoRA directory to look in (--lora-model-dir)");
  for (const char* ext : {".safetensors", ".ckpt", ".pt"}) {
    auto p = fs::path(dir) / (name + ext);
    if (fs::is_regular_file(p)) return p.string();
  }
  throw Error("<lora:" + name + ">: no " + name + ".safetensors, .ckpt or .pt in " + dir);
}

double number(const std::string& s, const std::string& tag) {
  auto v = parse_double(s);
  if (v && std::isfinite(*v)) return *v;
  throw Error(tag + ": expected a finite multiplier, got \"" + s + "\"");
}

std::string stem(const std::string& file) { return fs::path(file).stem().string(); }
}  // namespace

std::vector<LoraSpec> take_lora_tags(std::string& prompt, const std::string& dir) {
  static const std::regex tag("<lora:([^:>]*)(?::([^:>]*))?(?::([^:>]*))?>");
  std::vector<LoraSpec> out;
  std::smatch m;
  std::string rest = prompt, kept;
  while (std::regex_search(rest, m, tag)) {
    kept += m.prefix().str();
    const std::string t = m.str(0);
    LoraSpec s;
    s.file = resolve_name(m[1].str(), dir);
    if (m[2].matched) s.te = s.unet = number(m[2].str(), t);
    if (m[3].matched) s.unet = number(m[3].str(), t);
    out.push_back(s);
    rest = m.suffix().str();
  }
  prompt = kept + rest;
  return out;
}

LoraScope::LoraScope(LatentDiffusion& m, const std::vector<LoraSpec>& loras, bool restore) {
  if (loras.empty()) return;
  std::map<std::string, torch::Tensor> params;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& p : m.named_parameters()) {
    params[p.key()] = p.value();
    shapes[p.key()] = p.value().sizes().vec();
  }
  std::map<std::string, bool> touched;
  std::ostringstream sum;
  for (const auto& l : loras) {
    auto match = match_lora(io::load_weights(l.file).tensors, shapes, l.file);
    if (!match.unmatched.empty()) {
      std::string first;
      for (size_t i = 0; i < std::min<size_t>(3, match.unmatched.size()); ++i) first += (i ? ", " : "") + match.unmatched[i];
      notes.push_back(l.file + ": " + std::to_string(match.unmatched.size()) + " modules match no weight (" + first + ")");
    }
    for (const auto& d : match.deltas) {
      auto& w = params.at(d.key);
      if (restore && !touched[d.key]) saved_.emplace_back(w, w.detach().clone());
      touched[d.key] = true;
      add_lora_delta(w, d, d.text ? l.te : l.unet);
    }
    sum << (sum.tellp() > 0 ? ", " : "") << stem(l.file) << ":" << l.unet;
    if (l.te != l.unet) sum << ":te " << l.te;
  }
  summary = sum.str();
}

LoraScope::~LoraScope() {
  torch::NoGradGuard ng;
  for (auto& [w, orig] : saved_) w.detach().copy_(orig);
}

}  // namespace ldm::pipeline
