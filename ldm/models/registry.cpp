#include "ldm/models/registry.h"

#include <torch/torch.h>

#include <map>

#include "ldm/error.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/modules.h"
#include "ldm/modules/losses/contperceptual.h"
#include "ldm/modules/losses/vqperceptual.h"
#include "ldm/modules/taesd.h"
#include "ldm/util/config.h"
#include "ldm/util/registry.h"

namespace ldm {

namespace {
class IdentityModule : public torch::nn::Module {};

const Registry<Factory>& registry() {
  static const Registry<Factory> r("target", {
      {"ldm.modules.diffusionmodules.openaimodel.UNetModel",
       [](const Params& p) -> ModulePtr { return std::make_shared<UNetModel>(UNetOptions::from_params(p)); }},
      {"ldm.models.autoencoder.AutoencoderKL",
       [](const Params& p) -> ModulePtr { return AutoencoderKL::from_params(p); }},
      {"ldm.models.autoencoder.VQModel",
       [](const Params& p) -> ModulePtr { return VQModel::from_params(p, "ldm.models.autoencoder.VQModel"); }},
      {"ldm.models.autoencoder.VQModelInterface",
       [](const Params& p) -> ModulePtr { return VQModel::from_params(p, "ldm.models.autoencoder.VQModelInterface"); }},
      {"ldm.models.autoencoder.IdentityFirstStage",
       [](const Params& p) -> ModulePtr {
         p.ignore({"vq_interface"});
         p.check_unused("ldm.models.autoencoder.IdentityFirstStage");
         return std::make_shared<IdentityFirstStage>();
       }},
      {"ldm.modules.diffusionmodules.model.Encoder",
       [](const Params& p) -> ModulePtr { return std::make_shared<Encoder>(DDConfig::from_params(p)); }},
      {"ldm.modules.diffusionmodules.model.Decoder",
       [](const Params& p) -> ModulePtr { return std::make_shared<Decoder>(DDConfig::from_params(p)); }},
      {"ldm.models.diffusion.ddpm.LatentDiffusion",
       [](const Params& p) -> ModulePtr { return LatentDiffusion::from_params(p, false); }},
      {"ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
       [](const Params& p) -> ModulePtr {
         // SD inpainting: a hybrid-conditioned LatentDiffusion; the keys below only drive its training data
         p.ignore({"finetune_keys", "concat_keys", "masked_image_key", "keep_finetune_dims", "c_concat_log_start",
                   "c_concat_log_end"});
         return LatentDiffusion::from_params(p, false);
       }},
      {"ldm.models.diffusion.ddpm.DDPM",
       [](const Params& p) -> ModulePtr { return LatentDiffusion::from_params(p, true); }},
      {"ldm.modules.encoders.modules.ClassEmbedder",
       [](const Params& p) -> ModulePtr { return ClassEmbedder::from_params(p); }},
      {"ldm.modules.encoders.modules.FrozenCLIPEmbedder",
       [](const Params& p) -> ModulePtr { return FrozenCLIPEmbedder::from_params(p); }},
      {"ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
       [](const Params& p) -> ModulePtr { return FrozenOpenCLIPEmbedder::from_params(p); }},
      {"torch.nn.Identity", [](const Params&) -> ModulePtr { return std::make_shared<IdentityModule>(); }},
      {"taesd.Encoder",
       [](const Params& p) -> ModulePtr {
         auto n = std::make_shared<TaesdNet>(false, p.get<int64_t>("latent_channels", 4));
         p.check_unused("taesd.Encoder");
         return n;
       }},
      {"taesd.Decoder",
       [](const Params& p) -> ModulePtr {
         auto n = std::make_shared<TaesdNet>(true, p.get<int64_t>("latent_channels", 4));
         p.check_unused("taesd.Decoder");
         return n;
       }},
      // losses (lossconfig): the trainer's autoencoder task builds them from here
      {"ldm.modules.losses.LPIPSWithDiscriminator",
       [](const Params& p) -> ModulePtr { return LPIPSWithDiscriminator::from_params(p); }},
      {"ldm.modules.losses.contperceptual.LPIPSWithDiscriminator",
       [](const Params& p) -> ModulePtr { return LPIPSWithDiscriminator::from_params(p); }},
      {"taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
       [](const Params& p) -> ModulePtr { return VQLPIPSWithDiscriminator::from_params(p); }},
  });
  return r;
}

}  // namespace

bool is_known_target(const std::string& t) { return registry().contains(t); }

std::vector<std::string> known_targets() { return registry().targets(); }

ModulePtr instantiate_from_config(const YAML::Node& node, const std::string& where) {
  if (node && node.IsScalar() && (node.Scalar() == "__is_first_stage__" || node.Scalar() == "__is_unconditional__"))
    throw Error(where + ": \"" + node.Scalar() + "\" is handled by LatentDiffusion, not instantiate_from_config");
  auto tc = target_config(node, where, {"base_learning_rate"});
  return registry().at(tc.target, where)(tc.params);
}

int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

int64_t count_parameters(const YAML::Node& node, const std::string& where) {
  nn::InitScope meta(nn::Init::Meta);
  return count_parameters(*instantiate_from_config(node, where));
}

}  // namespace ldm
