// ldm fashion-eval: how recognisable are generated Fashion-MNIST samples?
// A small CNN classifier (trained here on the real training split, cached)
// gives the class accuracy of DIR/<label>/*.png, and the Frechet distance
// between its penultimate features of the samples and of the real test split
// (Heusel et al. 2017, with this classifier instead of Inception); the same
// distance for real training images is the floor.
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "ldm/data/dataset.h"
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/io/safetensors.h"
#include "ldm/util/progress.h"
#include "tools/ldm/commands.h"

namespace fs = std::filesystem;

namespace ldm::cli {

namespace {
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    c1 = register_module("c1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)));
    c2 = register_module("c2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)));
    f1 = register_module("f1", torch::nn::Linear(64 * 7 * 7, 128));
    f2 = register_module("f2", torch::nn::Linear(128, 10));
  }
  torch::Tensor features(const torch::Tensor& x) {  // x: [N, 1, 28, 28] in [-1, 1]
    auto h = torch::max_pool2d(torch::relu(c1->forward(x)), 2);
    h = torch::max_pool2d(torch::relu(c2->forward(h)), 2);
    return torch::relu(f1->forward(h.flatten(1)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return f2->forward(features(x)); }
  torch::nn::Conv2d c1{nullptr}, c2{nullptr};
  torch::nn::Linear f1{nullptr}, f2{nullptr};
};
TORCH_MODULE(Classifier);

torch::Tensor to_input(const torch::Tensor& u8) { return u8.to(torch::kFloat32).div(127.5).sub(1).unsqueeze(1); }

double accuracy(Classifier& net, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard ng;
  net->eval();
  int64_t right = 0;
  for (int64_t i = 0; i < x.size(0); i += 500) {
    auto xb = x.slice(0, i, i + 500), yb = y.slice(0, i, i + 500);
    right += net->forward(xb).argmax(1).eq(yb).sum().item<int64_t>();
  }
  return static_cast<double>(right) / x.size(0);
}

torch::Tensor features(Classifier& net, const torch::Tensor& x) {
  torch::NoGradGuard ng;
  net->eval();
  std::vector<torch::Tensor> f;
  for (int64_t i = 0; i < x.size(0); i += 500) f.push_back(net->features(x.slice(0, i, i + 500)));
  return torch::cat(f).to(torch::kFloat64);
}

// ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the trace term through the
// symmetric form sqrt(S1) S2 sqrt(S1), whose eigenvalues are those of S1 S2.
double frechet(const torch::Tensor& a, const torch::Tensor& b) {
  auto mu1 = a.mean(0), mu2 = b.mean(0);
  auto s1 = torch::cov(a.t()), s2 = torch::cov(b.t());
  auto [e1, v1] = torch::linalg_eigh(s1);
  auto r1 = v1.matmul(torch::diag(e1.clamp_min(0).sqrt())).matmul(v1.t());
  auto m = r1.matmul(s2).matmul(r1);
  auto ev = torch::linalg_eigvalsh((m + m.t()) / 2).clamp_min(0).sqrt().sum();
  return ((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * ev).item<double>();
}

Classifier get_classifier(const std::string& cache, const FashionMNIST& train, int epochs) {
  Classifier net;
  if (!cache.empty() && fs::exists(cache)) {
    auto w = io::load_safetensors(cache);
    torch::NoGradGuard ng;
    for (auto& p : net->named_parameters()) {
      auto it = w.find(p.key());
      if (it == w.end() || it->second.sizes() != p.value().sizes())
        throw Error(cache + ": not a classifier of this tool (missing or mismatched " + p.key() + "); delete it to retrain");
      p.value().copy_(it->second);
    }
    std::cerr << "classifier: loaded " << cache << "\n";
    return net;
  }
  torch::manual_seed(0);
  net = Classifier();
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-3));
  auto x = to_input(train.images()), y = train.labels();
  const int64_t n = x.size(0), bs = 128;
  Progress prog("classifier", epochs * (n / bs));
  int64_t k = 0;
  for (int e = 0; e < epochs; ++e) {
    if (e == epochs - 1 && epochs > 1)  // a last epoch at lr / 10
      for (auto& g : opt.param_groups()) g.options().set_lr(1e-4);
    auto perm = torch::randperm(n);
    net->train();
    for (int64_t i = 0; i + bs <= n; i += bs) {
      auto idx = perm.slice(0, i, i + bs);
      auto loss = torch::cross_entropy_loss(net->forward(x.index_select(0, idx)), y.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
      prog.update(++k);
    }
  }
  prog.finish();
  if (!cache.empty()) {
    fs::create_directories(fs::path(cache).parent_path().empty() ? "." : fs::path(cache).parent_path());
    io::TensorMap w;
    for (auto& p : net->named_parameters()) w[p.key()] = p.value().detach().contiguous();
    io::save_safetensors(cache, w);
  }
  return net;
}

struct Opts {
  std::string samples, classifier = "outputs/fashion/classifier.safetensors", grid, root = FashionMNIST::kDefaultRoot,
              json;
  int epochs = 4;
};

void run(const Opts& o) {
  FashionMNIST train("train", o.root), test("test", o.root);
  auto net = get_classifier(o.classifier, train, o.epochs);
  auto xt = to_input(test.images());
  const double test_acc = accuracy(net, xt, test.labels());
  std::printf("classifier accuracy on the real test split: %.2f%%\n", 100 * test_acc);

  // samples: DIR/<label>/*.png, 28x28 or 32x32 (2-pixel padding removed)
  std::vector<torch::Tensor> imgs;
  std::vector<int64_t> labels;
  std::vector<std::vector<torch::Tensor>> by_class(10);
  for (int c = 0; c < 10; ++c) {
    fs::path d = fs::path(o.samples) / std::to_string(c);
    if (!fs::is_directory(d)) throw Error(d.string() + ": missing (expected " + o.samples + "/<label 0-9>/*.png)");
    std::vector<std::string> files;
    for (auto& e : fs::directory_iterator(d))
      if (e.path().extension() == ".png" && e.path().filename() != "grid.png") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      auto im = io::load_image(f, 1);
      if (im.size(1) == 32 && im.size(2) == 32) im = im.narrow(1, 2, 28).narrow(2, 2, 28);
      if (im.size(1) != 28 || im.size(2) != 28) throw Error(f + ": expected 28x28 or 32x32, got " + c10::str(im.sizes()));
      imgs.push_back(im[0]);
      labels.push_back(c);
      by_class[c].push_back(im);
    }
  }
  if (imgs.empty()) throw Error(o.samples + ": no samples found");
  auto xs = torch::stack(imgs).mul(2).sub(1).unsqueeze(1);
  auto ys = torch::tensor(labels, torch::kInt64);
  torch::Tensor pred;
  {
    torch::NoGradGuard ng;
    net->eval();
    pred = net->forward(xs).argmax(1);
  }
  const double acc = pred.eq(ys).to(torch::kFloat64).mean().item<double>();
  std::printf("\n%-12s %8s %10s\n", "class", "samples", "accuracy");
  for (int c = 0; c < 10; ++c) {
    auto m = ys.eq(c);
    int64_t n = m.sum().item<int64_t>();
    double a = n ? pred.masked_select(m).eq(c).to(torch::kFloat64).mean().item<double>() : 0.0;
    std::printf("%-12s %8lld %9.1f%%\n", FashionMNIST::class_names()[c].c_str(), (long long)n, 100 * a);
  }
  auto ft = features(net, xt);
  const double fd = frechet(features(net, xs), ft);
  // floor: as many real training images as samples
  // drawn with its own fixed seed: the floor is the same whether or not the classifier was trained in this run
  auto floor_gen = torch::make_generator<at::CPUGeneratorImpl>(0);
  auto perm = torch::randperm(train.size(), floor_gen, torch::TensorOptions().dtype(torch::kInt64)).slice(0, 0, xs.size(0));
  const double fd_real = frechet(features(net, to_input(train.images().index_select(0, perm))), ft);
  std::printf("\nsamples: %lld, class accuracy %.2f%%\n", (long long)xs.size(0), 100 * acc);
  std::printf("Frechet distance (classifier features) to the test split: samples %.3f, real training images %.3f (floor)\n",
              fd, fd_real);
  if (!o.grid.empty()) {
    std::vector<torch::Tensor> cells;
    for (int c = 0; c < 10; ++c)
      for (int i = 0; i < 10; ++i)
        cells.push_back(i < static_cast<int>(by_class[c].size()) ? by_class[c][i] : torch::zeros({1, 28, 28}));
    io::save_png(o.grid, io::make_grid(torch::stack(cells), 10, 2, 1.0),
                 {{"Description", "Fashion-MNIST samples, one row per class 0-9"}});
    std::printf("grid: %s\n", o.grid.c_str());
  }
  if (!o.json.empty()) {
    std::ofstream(o.json) << "{\"classifier_test_accuracy\": " << test_acc << ", \"sample_accuracy\": " << acc
                          << ", \"samples\": " << xs.size(0) << ", \"frechet_samples\": " << fd
                          << ", \"frechet_real_train\": " << fd_real << "}\n";
  }
}
}  // namespace

void add_fashion_eval(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("fashion-eval", "class accuracy and Frechet distance of Fashion-MNIST samples");
  sub->add_option("--samples", o->samples, "directory with <label>/<i>.png")->required();
  sub->add_option("--classifier", o->classifier, "classifier weights (trained and saved here when absent)")->capture_default_str();
  sub->add_option("--epochs", o->epochs, "classifier training epochs")->capture_default_str();
  sub->add_option("--grid", o->grid, "write a 10x10 grid (10 samples per class) to this PNG");
  sub->add_option("--root", o->root, "Fashion-MNIST idx files")->capture_default_str();
  sub->add_option("--json", o->json, "also write the figures as JSON");
  sub->callback([o] { run(*o); });
}

}  // namespace ldm::cli
