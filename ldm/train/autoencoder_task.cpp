// The GAN autoencoder task, for AutoencoderKL and VQModel alike: the first
// stage trains with its lossconfig (LPIPSWithDiscriminator or
// VQLPIPSWithDiscriminator, both a GANAutoencoderLoss), two Adam optimizers
// with betas (0.5, 0.9) as the reference's configure_optimizers: the
// autoencoder's, and the discriminator's from disc_start.
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/registry.h"
#include "ldm/train/task.h"
#include "ldm/util/config.h"

namespace ldm {

namespace {
class GANAutoencoderTask : public Task {
 public:
  GANAutoencoderTask(const YAML::Node& model, double lr) {
    ae_ = instantiate_as<FirstStage>(model, "model");
    if (!ae_) throw Error("model.target: the autoencoder task trains AutoencoderKL or VQModel");
    auto lossconfig = model["params"]["lossconfig"];
    loss_ = instantiate_as<GANAutoencoderLoss>(lossconfig, "model.params.lossconfig");
    if (!loss_)
      throw Error("model.params.lossconfig.target: training needs a GAN autoencoder loss "
                  "(ldm.modules.losses.LPIPSWithDiscriminator or "
                  "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator)");
    ae_->register_module("loss", loss_);  // checkpoint keys loss.* as the reference
    ae_->make_ema();                      // over the loss's trainable weights too, as the reference's
    auto adam = [lr] { return torch::optim::AdamOptions(lr).betas({0.5, 0.9}); };
    opt_ae_ = std::make_unique<torch::optim::Adam>(params(0), adam());
    opt_disc_ = std::make_unique<torch::optim::Adam>(params(1), adam());
  }
  torch::nn::Module& module() override { return *ae_; }
  std::vector<NamedOptimizer> optimizers() override { return {{"opt0", opt_ae_.get()}, {"opt1", opt_disc_.get()}}; }
  std::vector<torch::Tensor> params(int idx) override {
    return idx == 1 ? loss_->discriminator->parameters() : ae_->autoencoder_parameters();
  }
  // Before disc_start the discriminator's loss is 0: its optimizer would not move.
  bool active(int idx, int64_t step) override { return idx == 0 || loss_->disc_active(step); }
  LossOut loss(const Batch& b, int idx, int64_t step, torch::Generator& g) override {
    auto x = b.image.to(dev);
    AutoencoderOutput a;
    if (idx == 1) {
      torch::NoGradGuard ng;  // the discriminator's step sees detached reconstructions
      a = forward(x, g);
    } else {
      a = forward(x, g);
    }
    return loss_->forward(a, idx, step, ae_->last_layer());
  }
  // AutoencoderKL's posterior sample with noise drawn for the global batch and
  // sliced to this rank's rows (one process: the reference's sample(g) exactly)
  AutoencoderOutput forward(const torch::Tensor& x, torch::Generator& g) {
    auto kl = std::dynamic_pointer_cast<AutoencoderKL>(ae_);
    if (!kl) return ae_->train_forward(x, g);
    AutoencoderOutput a;
    a.inputs = x;
    a.posterior.emplace(kl->encode(x));
    const auto& p = *a.posterior;
    auto shape = p.mean.sizes().vec();
    shape[0] *= world;
    auto noise = my_rows(torch::randn(shape, g, p.mean.options().device(g.device()))).to(p.mean.device());
    a.recon = kl->decode(p.mean + p.std * noise);
    return a;
  }
  // the reference's on_train_batch_end: one EMA update per batch
  void after_step() override {
    if (ae_->model_ema) ae_->model_ema->update(*ae_);
  }
  void log_images(const std::string& path, const Batch& b, const Settings&) override {
    torch::NoGradGuard ng;
    ae_->eval();
    auto x = b.image.slice(0, 0, std::min<int64_t>(8, b.image.size(0))).to(dev);
    auto rec = ae_->reconstruct(x);
    ae_->train();
    io::save_png(path, io::make_grid(io::to_unit_range(torch::cat({x, rec}, 0)).cpu(), x.size(0)),
                 {{"Description", "top: inputs, bottom: reconstructions"}});
  }

 private:
  std::shared_ptr<FirstStage> ae_;
  std::shared_ptr<GANAutoencoderLoss> loss_;
  std::unique_ptr<torch::optim::Adam> opt_ae_, opt_disc_;
};
}  // namespace

std::unique_ptr<Task> make_autoencoder_task(const YAML::Node& model, double lr) {
  return std::make_unique<GANAutoencoderTask>(model, lr);
}

}  // namespace ldm
