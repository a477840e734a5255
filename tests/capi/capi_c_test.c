/* The C API from C (compiled as C99): load, generate, write a PPM, and the
 * failure paths. Run by tests/capi/capi_test.cpp, which compares the pixels
 * with `ldm txt2img`.
 *   capi_c_test MODEL CONFIG VOCAB OUT.ppm */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ldm.h"

static int calls = 0, last_steps = 0;
static void on_progress(int step, int steps, double seconds, void* user) {
  (void)seconds;
  ++*(int*)user;
  calls = step;
  last_steps = steps;
}

static int fail(const char* what) {
  fprintf(stderr, "capi_c_test: %s: %s\n", what, ldm_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: capi_c_test MODEL CONFIG VOCAB OUT.ppm\n");
    return 2;
  }
  ldm_load_params lp;
  ldm_load_params_init(&lp);
  lp.model_path = "/nonexistent/model.ckpt";
  if (ldm_pipeline_load(&lp) != NULL || strstr(ldm_last_error(), "/nonexistent/model.ckpt") == NULL)
    return fail("a missing model must fail naming the file");
  lp.model_path = argv[1];
  lp.config_path = argv[2];
  lp.vocab_path = argv[3];
  ldm_pipeline* p = ldm_pipeline_load(&lp);
  if (!p) return fail("load");

  ldm_generate_params gp;
  ldm_generate_params_init(&gp);
  gp.prompt = "a cat";
  gp.steps = 4;
  int counted = 0;
  gp.progress = on_progress;
  gp.user = &counted;
  ldm_image* images = NULL;
  int count = 0;
  gp.cfg_scale = NAN;
  if (ldm_generate(p, &gp, &images, &count) != 1 || strstr(ldm_last_error(), "cfg scale") == NULL || images != NULL)
    return fail("cfg scale NaN must be refused");
  gp.cfg_scale = 7.0f;
  if (!isinf(gp.cfg_sigma_hi) || gp.cfg_sigma_lo != 0.0f) return fail("the default guidance interval is every step");
  gp.cfg_sigma_lo = 5.0f;
  gp.cfg_sigma_hi = 1.0f;
  if (ldm_generate(p, &gp, &images, &count) != 1 || strstr(ldm_last_error(), "cfg interval") == NULL)
    return fail("a reversed guidance interval must be refused");
  gp.cfg_sigma_lo = 0.0f;
  gp.cfg_sigma_hi = INFINITY;
  if (gp.cfg_rescale != 0.0f) return fail("guidance rescale is off by default");
  gp.cfg_rescale = 1.5f;
  if (ldm_generate(p, &gp, &images, &count) != 1 || strstr(ldm_last_error(), "cfg rescale") == NULL)
    return fail("a guidance rescale above 1 must be refused");
  gp.cfg_rescale = 0.0f;
  if (gp.clip_skip != 0) return fail("clip skip is the model's own by default");
  gp.clip_skip = 9;  /* the tiny text encoder has 2 layers */
  if (ldm_generate(p, &gp, &images, &count) != 1 || strstr(ldm_last_error(), "clip skip: expected 1 to 2") == NULL)
    return fail("a clip skip past the text encoder's layers must be refused");
  gp.clip_skip = 0;
  gp.width = -64;
  if (ldm_generate(p, &gp, &images, &count) != 1 || strstr(ldm_last_error(), "width") == NULL)
    return fail("width -64 must be refused");
  gp.width = 0;
  if (ldm_generate(p, &gp, &images, &count) != 0) return fail("generate");
  if (count != 1 || images[0].channels != 3 || images[0].width != 64 || images[0].height != 64)
    return fail("expected one 64x64 RGB image");
  if (counted != 4 || calls != 4 || last_steps != 4) {
    fprintf(stderr, "capi_c_test: progress called %d times, last step %d of %d\n", counted, calls, last_steps);
    return 1;
  }
  /* the hires fix: the same request at twice the size; a bad strength refused */
  ldm_image* big = NULL;
  int big_count = 0;
  if (gp.hires_scale != 0.0f || gp.hires_strength != 0.7f) return fail("the hires fix is off by default, strength 0.7");
  gp.hires_scale = 2.0f;
  gp.hires_steps = 2;
  gp.progress = NULL;
  if (ldm_generate(p, &gp, &big, &big_count) != 0 || big_count != 1 || big[0].width != 128 || big[0].height != 128)
    return fail("hires fix: expected one 128x128 image");
  ldm_free_images(big, big_count);
  gp.hires_strength = 0.0f;
  if (ldm_generate(p, &gp, &big, &big_count) != 1 || strstr(ldm_last_error(), "hires strength") == NULL)
    return fail("a hires strength of 0 must be refused");
  gp.hires_scale = 0.0f;
  gp.hires_strength = 0.7f;
  /* img2img with the init image's latents resized: a 48x40 image makes a 64x64 one;
   * one over 4x the output's pixels is refused, and so is a flag other than 0 or 1 */
  if (gp.init_resize_latent != 0) return fail("init_resize_latent is off by default");
  static uint8_t pixels[160 * 160 * 3];
  memset(pixels, 128, sizeof pixels);
  ldm_image init = {48, 40, 3, pixels};
  gp.init_image = &init;
  gp.strength = 0.5f;
  gp.init_resize_latent = 1;
  if (ldm_generate(p, &gp, &big, &big_count) != 0 || big_count != 1 || big[0].width != 64 || big[0].height != 64)
    return fail("img2img with latent resize: expected one 64x64 image");
  ldm_free_images(big, big_count);
  init.width = init.height = 160;
  if (ldm_generate(p, &gp, &big, &big_count) != 1 || strstr(ldm_last_error(), "at most 4x the output") == NULL)
    return fail("an init image over 4x the output's pixels must be refused when its latents are resized");
  gp.init_resize_latent = 2;
  if (ldm_generate(p, &gp, &big, &big_count) != 1 || strstr(ldm_last_error(), "init_resize_latent: expected 0 or 1") == NULL)
    return fail("init_resize_latent 2 must be refused");
  FILE* f = fopen(argv[4], "wb");
  if (!f) return fail("cannot write the PPM");
  fprintf(f, "P6\n%u %u\n255\n", images[0].width, images[0].height);
  fwrite(images[0].data, 1, (size_t)images[0].width * images[0].height * 3, f);
  fclose(f);
  ldm_free_images(images, count);
  ldm_pipeline_free(p);
  return 0;
}
