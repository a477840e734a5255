// The registry: factories keyed by the reference's target strings
// (`ldm.models.autoencoder.AutoencoderKL`, `ldm.lr_scheduler.LambdaLinearScheduler`,
// ...). Every kind of thing a config names is built through one of these
// tables (modules and models with their losses, datasets, LR schedules,
// training tasks), each owned by the layer that can build it, and every
// unknown target gets the same error listing what is known.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ldm/error.h"

namespace ldm {

template <class Factory>
class Registry {
 public:
  Registry(std::string kind, std::map<std::string, Factory> entries) : kind_(std::move(kind)), e_(std::move(entries)) {}

  // The factory for `target`; `where` names the config node in the error.
  const Factory& at(const std::string& target, const std::string& where) const {
    auto it = e_.find(target);
    if (it == e_.end())
      throw Error(where + ".target: unknown " + kind_ + " \"" + target + "\" (known: " + known() + ")");
    return it->second;
  }
  bool contains(const std::string& target) const { return e_.count(target) > 0; }
  std::vector<std::string> targets() const {
    std::vector<std::string> v;
    for (const auto& [k, f] : e_) v.push_back(k);
    return v;
  }
  std::string known() const {
    std::string s;
    for (const auto& [k, f] : e_) s += (s.empty() ? "" : ", ") + k;
    return s;
  }

 private:
  std::string kind_;
  std::map<std::string, Factory> e_;
};

}  // namespace ldm
