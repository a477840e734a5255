#include "ldm/util/config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "ldm/error.h"

namespace ldm {

YAML::Node parse_yaml(const std::string& text, const std::string& what) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(what + ": YAML error at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

YAML::Node load_yaml(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw Error(path + ": is a directory; expected a config YAML file");
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open config file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_yaml(ss.str(), path);
}

Params::Params(YAML::Node node, std::string where) : node_(node), where_(std::move(where)) {
  if (node_ && !node_.IsNull() && !node_.IsMap()) throw Error(where_ + ": expected a mapping of params");
}

bool Params::has(const std::string& key) const {
  return node_ && node_.IsMap() && node_[key] && !node_[key].IsNull();
}

namespace {
template <class T>
const char* type_name();
template <> const char* type_name<int>() { return "an integer"; }
template <> const char* type_name<int64_t>() { return "an integer"; }
template <> const char* type_name<double>() { return "a number"; }
template <> const char* type_name<bool>() { return "true or false"; }
template <> const char* type_name<std::string>() { return "a string"; }
template <> const char* type_name<std::vector<int>>() { return "a list of integers"; }
template <> const char* type_name<std::vector<int64_t>>() { return "a list of integers"; }
template <> const char* type_name<std::vector<double>>() { return "a list of numbers"; }
template <> const char* type_name<std::vector<std::string>>() { return "a list of strings"; }
template <> const char* type_name<std::vector<bool>>() { return "a list of true/false"; }

bool scalar_ok(const YAML::Node& n, const char* kind) {
  if (!n.IsScalar()) return false;
  const std::string& s = n.Scalar();
  if (std::string(kind) == "int") {
    if (s.empty()) return false;
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (i == s.size()) return false;
    for (; i < s.size(); ++i)
      if (!isdigit(static_cast<unsigned char>(s[i])) && s[i] != '_') return false;
    return true;
  }
  if (std::string(kind) == "bool")
    return s == "true" || s == "false" || s == "True" || s == "False" || s == "yes" || s == "no";
  if (std::string(kind) == "num") {
    // YAML 1.2 spellings of infinity and NaN, which yaml-cpp converts
    static const char* special[] = {".inf", ".Inf", ".INF", "+.inf", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN"};
    for (const char* sp : special)
      if (s == sp) return true;
    char* end = nullptr;
    std::strtod(s.c_str(), &end);
    return !s.empty() && end && *end == '\0';
  }
  return true;
}
}  // namespace

template <class T>
T Params::convert(const YAML::Node& n, const std::string& key) const {
  auto bad = [&]() {
    std::string got = n.IsScalar() ? "\"" + n.Scalar() + "\"" : n.IsSequence() ? "a list" : "a mapping";
    return Error(where_ + "." + key + ": expected " + type_name<T>() + ", got " + got);
  };
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, int64_t>) {
    if (!scalar_ok(n, "int")) throw bad();
  } else if constexpr (std::is_same_v<T, double>) {
    if (!scalar_ok(n, "num")) throw bad();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!scalar_ok(n, "bool")) throw bad();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!n.IsScalar()) throw bad();
  } else {
    if (!n.IsSequence()) throw bad();
    using E = typename T::value_type;
    T out;
    for (const auto& e : n) {
      const char* k = std::is_same_v<E, bool>      ? "bool"
                      : std::is_integral_v<E>      ? "int"
                      : std::is_same_v<E, double> ? "num"
                                                  : "str";
      if (!scalar_ok(e, k)) throw bad();
      out.push_back(e.as<E>());
    }
    return out;
  }
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    throw bad();
  }
}

template <class T>
T Params::get(const std::string& key, const T& def) const {
  used_.insert(key);
  if (!has(key)) return def;
  return convert<T>(node_[key], key);
}

template <class T>
T Params::req(const std::string& key) const {
  used_.insert(key);
  if (!has(key)) throw Error(where_ + ": missing required param \"" + key + "\"");
  return convert<T>(node_[key], key);
}

#define LDM_INST(T)                                            \
  template T Params::get<T>(const std::string&, const T&) const; \
  template T Params::req<T>(const std::string&) const;
LDM_INST(int)
LDM_INST(int64_t)
LDM_INST(double)
LDM_INST(bool)
LDM_INST(std::string)
LDM_INST(std::vector<int>)
LDM_INST(std::vector<int64_t>)
LDM_INST(std::vector<bool>)
LDM_INST(std::vector<double>)
LDM_INST(std::vector<std::string>)
#undef LDM_INST

std::vector<int> Params::int_list(const std::string& key, int n_if_scalar, const std::vector<int>& def) const {
  used_.insert(key);
  if (!has(key)) return def;
  const YAML::Node n = node_[key];
  if (n.IsScalar()) return std::vector<int>(n_if_scalar, convert<int>(n, key));
  return convert<std::vector<int>>(n, key);
}

YAML::Node Params::node(const std::string& key) const {
  used_.insert(key);
  return has(key) ? node_[key] : YAML::Node();
}

Params Params::sub(const std::string& key) const {
  return Params(node(key), where_ + "." + key);
}

void Params::ignore(std::initializer_list<const char*> keys) const {
  for (const char* k : keys) used_.insert(k);
}

void Params::check_unused(const std::string& target) const {
  if (!node_ || !node_.IsMap()) return;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    std::string k = it->first.as<std::string>();
    if (used_.count(k)) continue;
    std::string acc;
    for (const auto& u : used_) acc += (acc.empty() ? "" : ", ") + u;
    throw Error(where_ + ": unknown param \"" + k + "\" for " + target + " (accepted: " + acc + ")");
  }
}

TargetConfig target_config(const YAML::Node& node, const std::string& where,
                           std::initializer_list<const char*> extra) {
  if (!node || !node.IsMap()) throw Error(where + ": expected a mapping with \"target\" and \"params\"");
  if (!node["target"] || !node["target"].IsScalar()) throw Error(where + ": missing \"target\"");
  for (auto it = node.begin(); it != node.end(); ++it) {
    std::string k = it->first.as<std::string>();
    bool ok = k == "target" || k == "params";
    for (const char* e : extra) ok = ok || k == e;
    if (!ok)
      throw Error(where + ": unknown key \"" + k + "\" (accepted: target, params)");
  }
  return {node["target"].as<std::string>(), Params(node["params"], where + ".params")};
}

}  // namespace ldm
