// Datasets by the reference's target strings (data.params.train and friends).
#pragma once
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <vector>

#include "ldm/data/dataset.h"
#include "ldm/data/transforms.h"

namespace ldm {

struct DataSpec {
  std::shared_ptr<Dataset> ds;
  TransformOptions tf;
};

// `node` is {target, params}; the transforms come from the same params.
DataSpec make_dataset(const YAML::Node& node, const std::string& where);
std::vector<std::string> dataset_targets();

}  // namespace ldm
