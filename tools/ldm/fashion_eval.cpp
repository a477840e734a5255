// ldm fashion-eval: how recognisable are generated Fashion-MNIST samples?
// A small CNN classifier (trained here on the real training split, cached)
// gives the class accuracy of DIR/<label>/*.png, and the Frechet distance
// between its penultimate features of the samples and of the real test split
// (Heusel et al. 2017, with this classifier instead of Inception); the same
// distance for real training images is the floor. --autoencoder RUN_DIR
// measures the first stage the same way: the real test split encoded and
// decoded (the posterior mean, as the reference's reconstruct), with L1/PSNR.

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <cmath>
#include <nlohmann/json.hpp>

#include "ldm/data/dataset.h"
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/io/atomic_file.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"
#include "ldm/io/safetensors.h"
#include "ldm/io/state_dict.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/registry.h"
#include "ldm/modules/layers.h"
#include "ldm/modules/relu_max_pool.h"
#include "ldm/util/config.h"
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
    // max_pool2d(relu(.), 2) in one pass, bit for bit (the classifier trains to the same weights, ~7% faster)
    auto h = relu_max_pool2x2(c2->forward(relu_max_pool2x2(c1->forward(x))));
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
              json, autoencoder;
  int epochs = 4;
  bool ae_ema = false;
};

// The run's first stage, built from its config.yaml and filled from its newest checkpoint.
std::shared_ptr<FirstStage> load_first_stage(const std::string& run, bool ema) {
  const auto cfg_path = run_config_of(run);
  if (cfg_path.empty()) throw Error("--autoencoder " + run + ": not an ldm train run directory (no config.yaml)");
  auto cfg = load_yaml(cfg_path);
  std::shared_ptr<FirstStage> ae;
  {
    nn::InitScope empty(nn::Init::Empty);
    ae = instantiate_as<FirstStage>(model_node(cfg), cfg_path + ": model");
  }
  if (!ae) throw Error("--autoencoder " + run + ": the run's model is not an autoencoder");
  const auto file = weights_file(run);
  auto rep = load_state_dict(*ae, io::load_weights(file).tensors, false, file);
  LoadReport bad;
  for (auto& k : rep.missing)
    if (k.rfind("loss.", 0) != 0) bad.missing.push_back(k);
  bad.mismatched = rep.mismatched;
  if (!bad.ok()) throw Error("--autoencoder " + file + ": " + bad.summary());
  if (ema) {
    if (!ae->model_ema)
      throw Error("--ae-ema: " + run + " kept no EMA (its config's model.params.ema_decay, or use_ema for a VQModel)");
    ae->model_ema->copy_to(*ae);
  }
  ae->eval();
  return ae;
}

// The test split through encode/decode: [N, 1, 28, 28] in [-1, 1] (the
// training pad of 2 added before and removed after).
torch::Tensor reconstruct_all(FirstStage& ae, const torch::Tensor& x28) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < x28.size(0); i += 500) {
    auto xb = torch::constant_pad_nd(x28.slice(0, i, i + 500), {2, 2, 2, 2}, -1.0);
    out.push_back(ae.reconstruct(xb).narrow(2, 2, 28).narrow(3, 2, 28).clamp(-1, 1));
  }
  return torch::cat(out);
}

struct ReconFigures {
  double accuracy = 0, frechet = 0, l1 = 0, psnr = 0;
  torch::Tensor images;  // [N, 1, 28, 28] in [-1, 1]
};

ReconFigures measure_reconstruction(Classifier& net, const std::string& run, bool ema, const torch::Tensor& xt,
                                    const torch::Tensor& labels, const torch::Tensor& ft) {
  auto ae = load_first_stage(run, ema);
  ReconFigures f;
  f.images = reconstruct_all(*ae, xt);
  f.accuracy = accuracy(net, f.images, labels);
  f.frechet = frechet(features(net, f.images), ft);
  auto d = (f.images - xt).div(2);  // [0, 1] units
  f.l1 = d.abs().mean().item<double>();
  f.psnr = -10 * std::log10(d.square().mean().item<double>());
  return f;
}

// One row per class: 4 real test images, their reconstructions, 4 samples.
void write_compare_grid(const std::string& path, const torch::Tensor& xt, const torch::Tensor& labels,
                        const torch::Tensor& rec, const std::vector<std::vector<torch::Tensor>>& by_class) {
  std::vector<torch::Tensor> cells;
  for (int c = 0; c < 10; ++c) {
    auto idx = labels.eq(c).nonzero().flatten().slice(0, 0, 4);
    for (int i = 0; i < 4; ++i) cells.push_back((xt[idx[i].item<int64_t>()] + 1) / 2);
    for (int i = 0; i < 4; ++i) cells.push_back((rec[idx[i].item<int64_t>()] + 1) / 2);
    for (int i = 0; i < 4; ++i)
      cells.push_back(i < static_cast<int>(by_class[c].size()) ? by_class[c][i] : torch::zeros({1, 28, 28}));
  }
  io::save_png(path, io::make_grid(torch::stack(cells), 12, 2, 1.0),
               {{"Description", "per class: 4 real test images | their reconstructions | 4 samples"}});
  std::printf("comparison grid: %s (real | reconstruction | sample)\n", path.c_str());
}

// Frechet distance of `n` real training images to the test split: the floor
// for a set of n images (the estimate's bias depends on n). Its own seed: the
// same whether or not the classifier was trained in this run.
double real_floor(Classifier& net, const FashionMNIST& train, int64_t n, const torch::Tensor& ft) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(0);
  auto perm = torch::randperm(train.size(), gen, torch::TensorOptions().dtype(torch::kInt64)).slice(0, 0, n);
  return frechet(features(net, to_input(train.images().index_select(0, perm))), ft);
}

struct Samples {
  torch::Tensor x, y;  // [N, 1, 28, 28] in [-1, 1], labels
  std::vector<std::vector<torch::Tensor>> by_class = std::vector<std::vector<torch::Tensor>>(10);
};

// DIR/<label>/*.png, 28x28 or 32x32 (2-pixel padding removed)
Samples load_samples(const std::string& dir) {
  Samples s;
  std::vector<torch::Tensor> imgs;
  std::vector<int64_t> labels;
  for (int c = 0; c < 10; ++c) {
    fs::path d = fs::path(dir) / std::to_string(c);
    if (!fs::is_directory(d)) throw Error(d.string() + ": missing (expected " + dir + "/<label 0-9>/*.png)");
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
      s.by_class[c].push_back(im);
    }
  }
  if (imgs.empty()) throw Error(dir + ": no samples found");
  s.x = torch::stack(imgs).mul(2).sub(1).unsqueeze(1);
  s.y = torch::tensor(labels, torch::kInt64);
  return s;
}

void print_per_class(Classifier& net, const torch::Tensor& x, const torch::Tensor& y, const char* what) {
  torch::Tensor pred;
  {
    torch::NoGradGuard ng;
    net->eval();
    std::vector<torch::Tensor> parts;
    for (int64_t i = 0; i < x.size(0); i += 500) parts.push_back(net->forward(x.slice(0, i, i + 500)).argmax(1));
    pred = torch::cat(parts);
  }
  std::printf("\n%-12s %8s %10s  (%s)\n", "class", "images", "accuracy", what);
  for (int c = 0; c < 10; ++c) {
    auto m = y.eq(c);
    int64_t n = m.sum().item<int64_t>();
    double a = n ? pred.masked_select(m).eq(c).to(torch::kFloat64).mean().item<double>() : 0.0;
    std::printf("%-12s %8lld %9.1f%%\n", FashionMNIST::class_names()[c].c_str(), (long long)n, 100 * a);
  }
}

void run(const Opts& o) {
  if (o.samples.empty() && o.autoencoder.empty())
    throw Error("fashion-eval: give --samples DIR, --autoencoder RUN_DIR, or both");
  if (o.ae_ema && o.autoencoder.empty()) throw Error("--ae-ema: needs --autoencoder RUN_DIR");
  // bad paths fail here, before minutes of classifier training
  if (!o.autoencoder.empty() && !fs::exists(o.autoencoder))
    throw Error("--autoencoder " + o.autoencoder + ": not found (expected an autoencoder's run directory)");
  Samples smp;
  if (!o.samples.empty()) smp = load_samples(o.samples);
  FashionMNIST train("train", o.root), test("test", o.root);
  auto net = get_classifier(o.classifier, train, o.epochs);
  auto xt = to_input(test.images());
  const double test_acc = accuracy(net, xt, test.labels());
  std::printf("classifier accuracy on the real test split: %.2f%%\n", 100 * test_acc);
  auto ft = features(net, xt);
  nlohmann::json j = {{"classifier_test_accuracy", test_acc}};
  if (!o.samples.empty()) {
    print_per_class(net, smp.x, smp.y, "samples");
    const double acc = accuracy(net, smp.x, smp.y), fd = frechet(features(net, smp.x), ft);
    const double fd_real = real_floor(net, train, smp.x.size(0), ft);
    std::printf("\nsamples: %lld, class accuracy %.2f%%\n", (long long)smp.x.size(0), 100 * acc);
    std::printf("Frechet distance (classifier features) to the test split: samples %.3f, real training images %.3f "
                "(floor; x%.1f)\n", fd, fd_real, fd / fd_real);
    j.update({{"sample_accuracy", acc}, {"samples", smp.x.size(0)}, {"frechet_samples", fd}, {"frechet_real_train", fd_real}});
    if (!o.grid.empty()) {
      std::vector<torch::Tensor> cells;
      for (int c = 0; c < 10; ++c)
        for (int i = 0; i < 10; ++i)
          cells.push_back(i < static_cast<int>(smp.by_class[c].size()) ? smp.by_class[c][i] : torch::zeros({1, 28, 28}));
      io::save_png(o.grid, io::make_grid(torch::stack(cells), 10, 2, 1.0),
                   {{"Description", "Fashion-MNIST samples, one row per class 0-9"}});
      std::printf("grid: %s\n", o.grid.c_str());
    }
  }
  if (!o.autoencoder.empty()) {
    auto r = measure_reconstruction(net, o.autoencoder, o.ae_ema, xt, test.labels(), ft);
    const double floor = real_floor(net, train, xt.size(0), ft);
    print_per_class(net, r.images, test.labels(), "reconstructions of the test split");
    std::printf("\nreconstructions (%s): class accuracy %.2f%% (real test images %.2f%%), Frechet distance %.3f "
                "(floor for %lld real training images %.3f; x%.1f), L1 %.4f, PSNR %.2f dB\n",
                o.autoencoder.c_str(), 100 * r.accuracy, 100 * test_acc, r.frechet, (long long)xt.size(0), floor,
                r.frechet / floor, r.l1, r.psnr);
    j.update({{"reconstruction_accuracy", r.accuracy}, {"frechet_reconstruction", r.frechet},
              {"frechet_real_train_10000", floor}, {"reconstruction_l1", r.l1}, {"reconstruction_psnr", r.psnr}});
    if (!o.samples.empty() && !o.grid.empty()) {
      auto p = fs::path(o.grid);
      write_compare_grid((p.parent_path() / (p.stem().string() + "_compare.png")).string(), xt, test.labels(), r.images,
                         smp.by_class);
    }
  }
  if (!o.json.empty()) {
    const std::string text = j.dump(2) + "\n";
    write_file_atomic(o.json, text.data(), text.size());
  }
}
}  // namespace

void add_fashion_eval(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("fashion-eval", "class accuracy and Frechet distance of Fashion-MNIST samples");
  sub->add_option("--samples", o->samples, "directory with <label>/<i>.png");
  sub->add_option("--autoencoder", o->autoencoder,
                  "an autoencoder's run directory: its reconstructions of the test split measured the same way "
                  "(with --samples and --grid, also GRID_compare.png: real | reconstruction | sample per class)");
  sub->add_flag("--ae-ema", o->ae_ema, "measure the autoencoder's EMA weights (a run trained with ema_decay)");
  sub->add_option("--classifier", o->classifier, "classifier weights (trained and saved here when absent)")->capture_default_str();
  sub->add_option("--epochs", o->epochs, "classifier training epochs")->capture_default_str();
  sub->add_option("--grid", o->grid, "write a 10x10 grid (10 samples per class) to this PNG");
  sub->add_option("--root", o->root, "Fashion-MNIST idx files")->capture_default_str();
  sub->add_option("--json", o->json, "also write the figures as JSON");
  sub->callback([o] { run(*o); });
}

}  // namespace ldm::cli
