// A loaded model that generates: Pipeline::load once, then generate() per
// request. Threading: one generation at a time per pipeline (generate holds
// the pipeline's lock; a second caller waits); independent pipelines run in
// parallel from different threads, with nothing shared between them.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "ldm/models/diffusion/ddpm.h"
#include "ldm/modules/taesd.h"
#include "ldm/pipeline/request.h"
#include "ldm/pipeline/validate.h"

namespace ldm::pipeline {

struct LoadOptions {
  std::string model;       // .ckpt, .safetensors, or an ldm train run directory
  std::string config;      // YAML file or built-in name; empty: detected from the checkpoint
  std::string vocab;       // CLIP vocabulary; empty: found beside the model
  std::string precision = "fp32";  // fp32 | bf16 (weights converted on load, conv/matmul in bf16)
  std::string prediction;  // eps | v: overrides the config's parameterization
  std::string device = "cpu";
  bool use_ema = true;     // sample with the EMA weights when the checkpoint has them
  // One-shot use (a CLI command): each module's weights are released once the
  // request no longer needs them (lower peak memory); the pipeline then
  // refuses a second request.
  bool release_after_use = false;
  int64_t vae_tile = 0, vae_tile_overlap = 8;  // latent units; 0: no tiling
  int64_t attention_chunk_elements = 32ll << 20;  // score elements per attention chunk (bounded memory)
  bool quiet = false;      // no load report on stderr
  // TAESD decoder (taesd.py's taesd_decoder.* or diffusers' AutoencoderTiny):
  // decodes instead of the VAE (and encodes, when its encoder is in the file
  // or beside it as taesd_encoder.*), and makes previews.
  std::string taesd;
  std::string lora_dir;  // where <lora:name:mult> tags are looked up
  // textual-inversion embeddings (.pt, .safetensors, .bin): a prompt word
  // equal to a file's stem becomes its vectors; other widths are skipped, and
  // files that hold no embedding too (a note in the first text request's result)
  std::string embd_dir;
};

class Pipeline {
 public:
  static std::shared_ptr<Pipeline> load(const LoadOptions& o);
  // Around a model built or trained in this process (the trainer's image
  // log, the example program): the caller keeps ownership of EMA swaps.
  static std::shared_ptr<Pipeline> from_model(std::shared_ptr<LatentDiffusion> model, LoadOptions o = {});
  ~Pipeline();

  // Validates the request (validate.h), then conditions, samples and decodes.
  // Throws ldm::Error on bad input; a cancelled request returns Status::Cancelled.
  GenerateResult generate(const GenerateRequest& r, const GenerateCallbacks& cb = {});
  // Cancels the running request at its next step (any thread).
  void cancel() { cancel_.store(true); }

  LatentDiffusion& model() { return *m_; }
  const LoadOptions& options() const { return o_; }
  int64_t downsample_factor();
  // Default output size in pixels (the config's image_size times the factor).
  int64_t default_size();
  int64_t image_channels();  // of the images it makes and takes (1 or 3)
  ModelFacts facts();
  // Throws the one-line ldm::Error generate() would, without generating.
  void validate(const GenerateRequest& r);
  // A quick RGB look at latents [N, C, h, w] (a progress callback's x0
  // estimate): "taesd" (needs LoadOptions::taesd), "proj" (a fixed 4 -> 3
  // linear map of SD latents, no weights) or "auto" (TAESD when loaded).
  // [N, 3, H, W] in [0, 1].
  torch::Tensor preview(const torch::Tensor& latents, const std::string& kind = "auto");
  double load_seconds() const { return load_seconds_; }

 private:
  Pipeline(std::shared_ptr<LatentDiffusion> m, LoadOptions o);
  GenerateResult run(const GenerateRequest& r, const GenerateCallbacks& cb);
  // The tokenizer and embeddings, on the first text request; notes on files skipped.
  std::vector<std::string> attach_tokenizer();
  std::vector<std::string> load_embeddings();
  void load_taesd_parts();
  void release(torch::nn::Module& mod);

  std::shared_ptr<LatentDiffusion> m_;
  LoadOptions o_;
  std::unique_ptr<EmaScope> ema_;  // EMA weights swapped in for the pipeline's life
  std::shared_ptr<TaesdNet> taesd_dec_, taesd_enc_;
  std::mutex mu_;
  std::atomic<bool> cancel_{false};
  bool released_ = false;
  double load_seconds_ = 0;
};

}  // namespace ldm::pipeline
