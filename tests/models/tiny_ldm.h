// A LatentDiffusion small enough for unit tests: identity first stage and
// cond stage, a one-level UNet on 8x8 latents with cross-attention (context 16).
#pragma once
#include <string>

namespace ldm::test {

// `extra` is spliced into the model's params (YAML lines indented by two spaces).
inline std::string tiny_ldm_yaml(const std::string& extra = "", const std::string& conditioning_key = "crossattn",
                                 int unet_in_channels = 4) {
  return R"(target: ldm.models.diffusion.ddpm.LatentDiffusion
params:
  timesteps: 1000
  image_size: 8
  channels: 4
  conditioning_key: )" +
         conditioning_key + "\n" + extra + R"(
  first_stage_config: {target: ldm.models.autoencoder.IdentityFirstStage}
  cond_stage_config: {target: torch.nn.Identity}
  unet_config:
    target: ldm.modules.diffusionmodules.openaimodel.UNetModel
    params: {image_size: 8, in_channels: )" +
         std::to_string(unet_in_channels) + R"(, out_channels: 4, model_channels: 32, attention_resolutions: [1],
             num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true,
             context_dim: 16, legacy: false}
)";
}

}  // namespace ldm::test
