/* ldm: latent diffusion models in C++. The C API of libldm.so.
 *
 * Load a pipeline once, generate as often as needed:
 *
 *   ldm_load_params lp;
 *   ldm_load_params_init(&lp);
 *   lp.model_path = "model.safetensors";
 *   ldm_pipeline* p = ldm_pipeline_load(&lp);
 *   if (!p) { fprintf(stderr, "%s\n", ldm_last_error()); return 1; }
 *   ldm_generate_params gp;
 *   ldm_generate_params_init(&gp);
 *   gp.prompt = "a lighthouse at dusk";
 *   ldm_image* images; int count;
 *   if (ldm_generate(p, &gp, &images, &count) != 0) fprintf(stderr, "%s\n", ldm_last_error());
 *   ...
 *   ldm_free_images(images, count);
 *   ldm_pipeline_free(p);
 *
 * Threading: one ldm_generate at a time per pipeline (a second call waits);
 * different pipelines generate in parallel from different threads.
 * ldm_cancel may be called from any thread. No C++ exception crosses this
 * API: failures return NULL or a non-zero code, and ldm_last_error() (per
 * thread) gives the same one-line message the ldm command prints.
 *
 * The params structs gain members at their end between versions: build against
 * the header of the libldm you load, and fill them through their _init
 * functions (new members then start at their defaults). */
#ifndef LDM_H
#define LDM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LDM_BUILDING_LIBRARY)
#define LDM_API __attribute__((visibility("default")))
#else
#define LDM_API
#endif

typedef struct ldm_pipeline ldm_pipeline;

typedef struct ldm_load_params {
  const char* model_path;  /* .ckpt, .safetensors or an ldm train run directory */
  const char* config_path; /* YAML or built-in name; NULL: detected from the checkpoint */
  const char* vocab_path;  /* CLIP vocabulary; NULL: found beside the model */
  const char* precision;   /* "fp32" (default) or "bf16" */
  int n_threads;           /* 0: the default (the machine's cores) */
} ldm_load_params;

typedef struct ldm_image {
  uint32_t width, height, channels; /* channels: 1 or 3 */
  uint8_t* data;                    /* height rows of width * channels bytes */
} ldm_image;

/* step is 1-based; seconds since sampling started */
typedef void (*ldm_progress_fn)(int step, int steps, double seconds, void* user);

typedef struct ldm_generate_params {
  const char* prompt;          /* NULL or "": the empty prompt */
  const char* negative_prompt; /* NULL or "" */
  int width, height;           /* pixels; 0: the model's own size */
  int steps;                   /* default 20 */
  float cfg_scale;             /* default 7.0; 1 turns guidance off */
  int64_t seed;                /* default 42; -1: random */
  const char* sampler;         /* ddim, plms, ddpm, dpm_solver++, euler, euler_a (default), heun, dpm++2m */
  const char* schedule;        /* discrete (default) or karras */
  int batch_count;             /* images, default 1 */
  float strength;              /* img2img: how much to change, default 0.75 */
  const ldm_image* init_image; /* NULL: text to image */
  const ldm_image* mask;       /* NULL, or white (>= 128) = repaint; needs init_image */
  ldm_progress_fn progress;    /* NULL: none */
  void* user;                  /* passed to progress */
  /* guide only where cfg_sigma_lo < sigma <= cfg_sigma_hi (noise levels; the
   * conditional model alone elsewhere); default 0 and INFINITY: every step */
  float cfg_sigma_lo, cfg_sigma_hi;
  float cfg_rescale; /* guidance rescale 0-1 (diffusers' guidance_rescale), default 0: off */
  /* the hires fix (A1111's): generate, enlarge the latents by hires_scale (1-4),
   * then img2img them at that size; default 0: off */
  float hires_scale;
  float hires_strength;       /* of the second pass, default 0.7 */
  int hires_steps;            /* of the second pass; 0 (default): steps */
  const char* hires_upscaler; /* latent (default, bilinear), latent-nearest, latent-bicubic; lanczos, nearest (the decoded image) */
  int clip_skip;              /* text models: 1 the last layer, 2 the penultimate (A1111's Clip skip); 0 (default): the model's own */
  /* img2img: 1 encodes init_image at its own size (at most 4x the output's
   * pixels) and resizes its latents to the output's (A1111's "latent upscale"
   * resize mode); 0 (default): the image is resized to the output size first */
  int init_resize_latent;
} ldm_generate_params;

LDM_API void ldm_load_params_init(ldm_load_params* p);
LDM_API ldm_pipeline* ldm_pipeline_load(const ldm_load_params* p); /* NULL on failure */
LDM_API void ldm_pipeline_free(ldm_pipeline* p);

LDM_API void ldm_generate_params_init(ldm_generate_params* p);
/* 0 on success: *images holds *count images to free with ldm_free_images.
 * 1 on failure, 2 when cancelled (see ldm_last_error). */
LDM_API int ldm_generate(ldm_pipeline* p, const ldm_generate_params* params, ldm_image** images, int* count);
LDM_API void ldm_free_images(ldm_image* images, int count);
/* Stops the running ldm_generate of this pipeline at its next step. */
LDM_API void ldm_cancel(ldm_pipeline* p);
/* The last failure's one-line message on this thread ("" when none). */
LDM_API const char* ldm_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* LDM_H */
