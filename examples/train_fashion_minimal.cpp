// The library as a program uses it: build a class-conditional diffusion
// model in code, train it with AdamW and a warm-up/cosine schedule, sample
// with classifier-free guidance and save a PNG grid.
//
//   example_train_fashion_minimal [steps=200] [out=fashion_minimal.png]
#include <torch/torch.h>

#include <iostream>

#include "ldm/data/dataset.h"
#include "ldm/io/image.h"
#include "ldm/lr_scheduler.h"
#include "ldm/models/diffusion/builder.h"
#include "ldm/pipeline/pipeline.h"
#include "ldm/util/runtime.h"

int main(int argc, char** argv) {
  ldm::reexec_with_runtime_env(argv);
  ldm::init_runtime();
  const int64_t steps = argc > 1 ? std::stoll(argv[1]) : 200;
  const std::string out = argc > 2 ? argv[2] : "fashion_minimal.png";
  try {
    torch::manual_seed(0);
    // Fashion-MNIST 28x28 padded to 32x32, pixels in [-1, 1]
    ldm::FashionMNIST data("train");
    auto images = torch::constant_pad_nd(data.images().slice(0, 0, 4096).to(torch::kFloat32).div(127.5).sub(1), {2, 2, 2, 2});
    auto labels = data.labels().slice(0, 0, 4096);

    ldm::LatentDiffusionSpec spec;  // diffusion directly on pixels (no first stage)
    spec.latent_dim = 1;
    spec.latent_size = 32;
    spec.attention_resolutions = {8};
    spec.num_heads = 2;
    spec.model_channels = 32;
    spec.channel_mult = {1, 2, 2};
    spec.num_res_blocks = 1;
    spec.num_classes = 10;
    spec.context_dim = 32;
    auto model = ldm::make_latent_diffusion(spec);
    model->train();

    std::vector<torch::Tensor> params = model->unet()->parameters();
    for (auto& p : model->cond_stage()->parameters()) params.push_back(p);
    torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
    auto sched = ldm::get_scheduler("cosine", opt, /*num_warmup_steps=*/steps / 10, /*num_training_steps=*/steps);
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(1);

    for (int64_t step = 0; step < steps; ++step) {  // train_step: forward, backward, step
      auto idx = torch::randint(0, images.size(0), {32}, gen, torch::kInt64);
      auto x = images.index_select(0, idx).unsqueeze(1);
      auto c = model->make_cond(model->get_learned_conditioning(labels.index_select(0, idx)));
      auto loss = model->training_loss(x, c, gen);
      opt.zero_grad();
      loss.backward();
      opt.step();
      sched->step();
      model->model_ema->update(model->model_wrapper());
      if (step % 20 == 0 || step + 1 == steps)
        std::cout << "step " << step << " loss " << loss.item<double>() << " lr " << sched->last_lr() << "\n";
    }

    // sample one image per class with the EMA weights and guidance 3
    model->eval();
    auto ema = model->ema_scope();
    ldm::pipeline::GenerateRequest r;
    r.class_labels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    r.batch = 10;
    r.cfg_scale = 3.0;
    r.sampler = "dpm++2m";
    r.steps = 20;
    r.seed = 2;
    auto x = ldm::pipeline::Pipeline::from_model(model)->generate(r).images;
    ldm::io::save_png(out, ldm::io::make_grid(x, 10));
    std::cout << "wrote " << out << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
