// Datasets: random access to examples (image in [0, 1], [C, H, W] float32,
// plus label and/or caption). Transforms and batching live in transforms.h
// and loader.h. get() must be safe to call from several threads.
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace ldm {
class Params;

struct Example {
  torch::Tensor image;  // [C, H, W] float32 in [0, 1]
  int64_t label = -1;   // -1: none
  std::string caption;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual Example get(int64_t i) const = 0;
  virtual std::string describe() const = 0;  // for logs: what and where
  virtual int64_t num_classes() const { return 0; }
};

// Fashion-MNIST from idx files (gzip or plain): 60000 train / 10000 test
// 28x28 grayscale images with labels 0-9. Debian's dataset-fashion-mnist
// installs them in /usr/share/datasets/fashion-mnist.
class FashionMNIST : public Dataset {
 public:
  static constexpr const char* kDefaultRoot = "/usr/share/datasets/fashion-mnist";
  explicit FashionMNIST(const std::string& split = "train", const std::string& root = kDefaultRoot);
  int64_t size() const override { return images_.size(0); }
  Example get(int64_t i) const override;
  std::string describe() const override;
  int64_t num_classes() const override { return 10; }
  const torch::Tensor& images() const { return images_; }  // [N, 28, 28] uint8
  const torch::Tensor& labels() const { return labels_; }  // [N] int64
  static const std::vector<std::string>& class_names();

 private:
  std::string split_, root_;
  torch::Tensor images_, labels_;
};

// A folder of images (PNG/JPEG/BMP/...): with class sub-folders
// (root/<class>/*.png, labels by sorted folder name) or flat with optional
// captions in a sidecar root/<name>.txt. Unreadable images throw naming the
// file, or are replaced by the next readable one with a warning when
// skip_bad is set.
class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& root, int channels = 3, bool skip_bad = false);
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  Example get(int64_t i) const override;
  std::string describe() const override;
  int64_t num_classes() const override { return static_cast<int64_t>(classes_.size()); }
  const std::vector<std::string>& classes() const { return classes_; }

 private:
  std::string root_;
  int channels_;
  bool skip_bad_;
  std::vector<std::string> files_, classes_;
  std::vector<int64_t> labels_;
};

// Reads an idx file (the MNIST format, optionally gzip-compressed) into a
// uint8 tensor shaped by its header; errors name the file.
torch::Tensor read_idx(const std::string& path);

}  // namespace ldm
