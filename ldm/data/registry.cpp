#include "ldm/data/registry.h"

#include <functional>

#include "ldm/util/config.h"
#include "ldm/util/registry.h"

namespace ldm {

namespace {
using DatasetFactory = std::function<std::shared_ptr<Dataset>(const Params&)>;
const Registry<DatasetFactory>& datasets() {
  static const Registry<DatasetFactory> r(
      "dataset",
      {{"ldm.data.fashion_mnist.FashionMNIST",
        [](const Params& p) -> std::shared_ptr<Dataset> {
          return std::make_shared<FashionMNIST>(p.get<std::string>("split", "train"),
                                                p.get<std::string>("root", FashionMNIST::kDefaultRoot));
        }},
       {"ldm.data.image_folder.ImageFolder", [](const Params& p) -> std::shared_ptr<Dataset> {
          return std::make_shared<ImageFolder>(p.req<std::string>("root"), p.get<int>("channels", 3),
                                               p.get<bool>("skip_bad", false));
        }}});
  return r;
}
}  // namespace

DataSpec make_dataset(const YAML::Node& node, const std::string& where) {
  auto tc = target_config(node, where);
  DataSpec d;
  d.ds = datasets().at(tc.target, where)(tc.params);
  d.tf = TransformOptions::from_params(tc.params);
  tc.params.check_unused(tc.target);
  return d;
}

std::vector<std::string> dataset_targets() { return datasets().targets(); }

}  // namespace ldm
