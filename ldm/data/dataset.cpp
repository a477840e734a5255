#include "ldm/data/dataset.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

#include "ldm/error.h"
#include "ldm/io/image.h"

namespace fs = std::filesystem;

namespace ldm {

torch::Tensor read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (!f) throw Error(path + ": cannot open (install dataset-fashion-mnist, or give the folder holding the idx files)");
  std::string data;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) data.append(buf, n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string why = (n < 0 && msg) ? msg : "";
  gzclose(f);
  if (n < 0) throw Error(path + ": read error (" + why + ")");
  auto u8 = [&](size_t i) { return static_cast<unsigned char>(data[i]); };
  if (data.size() < 4 || u8(0) != 0 || u8(1) != 0 || u8(2) != 0x08)
    throw Error(path + ": not an idx file of unsigned bytes (bad magic)");
  const int ndim = u8(3);
  if (ndim < 1 || ndim > 4 || data.size() < 4 + 4 * static_cast<size_t>(ndim)) throw Error(path + ": bad idx header");
  std::vector<int64_t> shape;
  size_t count = 1;
  for (int d = 0; d < ndim; ++d) {
    size_t at = 4 + 4 * d;
    int64_t v = (int64_t(u8(at)) << 24) | (u8(at + 1) << 16) | (u8(at + 2) << 8) | u8(at + 3);
    shape.push_back(v);
    count *= static_cast<size_t>(v);
    if (count > data.size()) throw Error(path + ": header promises more data than the file holds");
  }
  const size_t off = 4 + 4 * ndim;
  if (data.size() - off != count)
    throw Error(path + ": expected " + std::to_string(count) + " bytes of data, found " + std::to_string(data.size() - off));
  auto t = torch::empty(shape, torch::kUInt8);
  std::memcpy(t.data_ptr<uint8_t>(), data.data() + off, count);
  return t;
}

FashionMNIST::FashionMNIST(const std::string& split, const std::string& root) : split_(split), root_(root) {
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test" || split == "validation") prefix = "t10k";
  else throw Error("FashionMNIST: split must be train or test, got \"" + split + "\"");
  auto find = [&](const std::string& base) {
    for (const char* ext : {".gz", ""})
      if (fs::exists(fs::path(root) / (base + ext))) return (fs::path(root) / (base + ext)).string();
    return (fs::path(root) / (base + ".gz")).string();  // read_idx reports it missing
  };
  images_ = read_idx(find(prefix + "-images-idx3-ubyte"));
  labels_ = read_idx(find(prefix + "-labels-idx1-ubyte")).to(torch::kInt64);
  if (images_.dim() != 3 || labels_.dim() != 1 || images_.size(0) != labels_.size(0))
    throw Error(root + ": " + prefix + " images " + c10::str(images_.sizes()) + " and labels " +
                c10::str(labels_.sizes()) + " do not match");
}

Example FashionMNIST::get(int64_t i) const {
  Example e;
  e.image = images_[i].unsqueeze(0).to(torch::kFloat32).div(255.0);
  e.label = labels_[i].item<int64_t>();
  return e;
}

std::string FashionMNIST::describe() const {
  return "Fashion-MNIST " + split_ + " (" + std::to_string(size()) + " images, " + root_ + ")";
}

const std::vector<std::string>& FashionMNIST::class_names() {
  static const std::vector<std::string> n = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                             "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return n;
}

namespace {
bool is_image(const fs::path& p) {
  auto e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp" || e == ".tga" || e == ".gif";
}
}  // namespace

ImageFolder::ImageFolder(const std::string& root, int channels, bool skip_bad)
    : root_(root), channels_(channels), skip_bad_(skip_bad) {
  if (!fs::is_directory(root)) throw Error(root + ": not a directory");
  std::vector<fs::path> subdirs;
  for (auto& e : fs::directory_iterator(root))
    if (e.is_directory()) subdirs.push_back(e.path());
  std::sort(subdirs.begin(), subdirs.end());
  if (!subdirs.empty()) {
    for (auto& d : subdirs) {
      std::vector<std::string> fl;
      for (auto& e : fs::directory_iterator(d))
        if (e.is_regular_file() && is_image(e.path())) fl.push_back(e.path().string());
      if (fl.empty()) continue;
      std::sort(fl.begin(), fl.end());
      for (auto& f : fl) {
        files_.push_back(f);
        labels_.push_back(static_cast<int64_t>(classes_.size()));
      }
      classes_.push_back(d.filename().string());
    }
  } else {
    for (auto& e : fs::directory_iterator(root))
      if (e.is_regular_file() && is_image(e.path())) files_.push_back(e.path().string());
    std::sort(files_.begin(), files_.end());
  }
  if (files_.empty()) throw Error(root + ": no images found (PNG, JPEG, BMP, TGA, GIF), flat or in class sub-folders");
}

Example ImageFolder::get(int64_t i) const {
  for (int64_t tries = 0; tries < size(); ++tries) {
    const std::string& f = files_[(i + tries) % size()];
    Example e;
    try {
      e.image = io::load_image(f, channels_);
    } catch (const Error& err) {
      if (!skip_bad_) throw;
      static std::mutex mu;
      std::lock_guard<std::mutex> lock(mu);
      std::cerr << "warning: skipping unreadable image: " << err.what() << "\n";
      continue;
    }
    if (!labels_.empty()) e.label = labels_[(i + tries) % size()];
    auto txt = fs::path(f).replace_extension(".txt");
    if (fs::exists(txt)) {
      std::ifstream in(txt);
      std::getline(in, e.caption, '\0');
      while (!e.caption.empty() && (e.caption.back() == '\n' || e.caption.back() == '\r')) e.caption.pop_back();
    }
    return e;
  }
  throw Error(root_ + ": no readable image left");
}

std::string ImageFolder::describe() const {
  return "image folder " + root_ + " (" + std::to_string(size()) + " images" +
         (classes_.empty() ? "" : ", " + std::to_string(classes_.size()) + " classes") + ")";
}

}  // namespace ldm
