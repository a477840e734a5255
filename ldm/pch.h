// Precompiled header for the library, CLI and tests: libtorch is heavy to parse.
#pragma once
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <map>
#include <memory>
