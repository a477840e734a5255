// Config files in the reference schema ({target, params}) and type-checked
// access to params: every read is recorded so unknown keys are reported.
#pragma once
#include <yaml-cpp/yaml.h>

#include <set>
#include <string>
#include <vector>

namespace ldm {

// Loads a YAML file; ldm::Error names the file and line on a syntax error.
YAML::Node load_yaml(const std::string& path);
YAML::Node parse_yaml(const std::string& text, const std::string& what);

class Params {
 public:
  Params() = default;
  // `node` is the params mapping (may be null); `where` names it in errors,
  // e.g. "model.params.unet_config.params" or "unet.yaml: model.params".
  Params(YAML::Node node, std::string where);

  bool has(const std::string& key) const;
  template <class T>
  T get(const std::string& key, const T& def) const;
  template <class T>
  T req(const std::string& key) const;
  // int or list of ints (num_res_blocks accepts both)
  std::vector<int> int_list(const std::string& key, int n_if_scalar, const std::vector<int>& def) const;
  YAML::Node node(const std::string& key) const;  // raw child (marks it used)
  Params sub(const std::string& key) const;         // child mapping as Params
  // Marks keys the reference accepts but this port ignores on purpose.
  void ignore(std::initializer_list<const char*> keys) const;
  // Throws for any key never read, listing the accepted ones.
  void check_unused(const std::string& target) const;
  const std::string& where() const { return where_; }
  YAML::Node raw() const { return node_; }

 private:
  YAML::Node node_;
  std::string where_;
  mutable std::set<std::string> used_;
  template <class T>
  T convert(const YAML::Node& n, const std::string& key) const;
};

// {target, params} as the reference's instantiate_from_config reads it.
struct TargetConfig {
  std::string target;
  Params params;
};
// `extra` names sibling keys the caller reads itself (model.base_learning_rate).
TargetConfig target_config(const YAML::Node& node, const std::string& where,
                           std::initializer_list<const char*> extra = {});

}  // namespace ldm
