// LoRA files against a LatentDiffusion's checkpoint keys: the forms found in
// the wild (kohya LoRA/LoCon with diffusers- or LDM-style UNet names and
// lora_te_ text-encoder names, diffusers/PEFT lora_A/lora_B, LyCORIS LoHa and
// LoKr) resolved to the weights they change, and the weight deltas each
// format defines. Nothing here holds a model: the same deltas merge into a
// checkpoint file (ldm convert) or into a loaded model (the pipeline).
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace ldm {

// One weight a LoRA module changes.
struct LoraDelta {
  std::string key;        // checkpoint key (model.diffusion_model...., cond_stage_model....)
  torch::Tensor delta;    // float32, (alpha / rank) x the format's product, the shape of `part`
  bool text = false;      // a text-encoder weight (A1111's te multiplier)
  int64_t in_channels = -1;  // >= 0: the delta covers only the first input channels (9-channel conv_in)
  int64_t row_slice = -1;    // >= 0: the rows [k*n, (k+1)*n) of an in_proj_weight (OpenCLIP q/k/v)
};

struct LoraMatch {
  std::vector<LoraDelta> deltas;
  std::vector<std::string> unmatched;  // module names of the file no weight of the model has
};

// `lora`: the file's tensors; `shapes`: every weight key of the model with its
// shape. Throws ldm::Error naming `what` for a malformed module or a file
// that matches nothing.
LoraMatch match_lora(const std::map<std::string, torch::Tensor>& lora,
                     const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& what);

// weight += multiplier x delta, on the delta's part of the weight (in place,
// in the weight's dtype).
void add_lora_delta(torch::Tensor& weight, const LoraDelta& d, double multiplier);

// The kohya name (diffusers style, as A1111 and stable-diffusion.cpp read it)
// of a UNet module given by its LDM path relative to diffusion_model
// ("input_blocks.4.1.transformer_blocks.0.attn1.to_q" ->
// "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q");
// `step` = num_res_blocks + 1. The inverse of what match_lora resolves.
std::string kohya_unet_name(const std::string& ldm_module, int64_t step);

// "FILE[:MULT]" -> (file, multiplier), MULT defaulting to 1.
std::pair<std::string, double> parse_lora_arg(const std::string& spec);

}  // namespace ldm
