#!/usr/bin/env python3
"""Generate an image through libldm.so from Python, standard library only.

    python3 examples/ctypes_generate.py --lib build/libldm.so -m model.safetensors \
        -p "a lighthouse at dusk" -o out.ppm [--config CFG] [--vocab V] [--steps 20] [--seed 42]

Writes a binary PPM (any image viewer opens it; no imaging library needed).
"""
import argparse
import ctypes as C
import sys


class LoadParams(C.Structure):
    _fields_ = [("model_path", C.c_char_p), ("config_path", C.c_char_p), ("vocab_path", C.c_char_p),
                ("precision", C.c_char_p), ("n_threads", C.c_int)]


class Image(C.Structure):
    _fields_ = [("width", C.c_uint32), ("height", C.c_uint32), ("channels", C.c_uint32),
                ("data", C.POINTER(C.c_uint8))]


PROGRESS = C.CFUNCTYPE(None, C.c_int, C.c_int, C.c_double, C.c_void_p)


class GenerateParams(C.Structure):
    _fields_ = [("prompt", C.c_char_p), ("negative_prompt", C.c_char_p), ("width", C.c_int), ("height", C.c_int),
                ("steps", C.c_int), ("cfg_scale", C.c_float), ("seed", C.c_int64), ("sampler", C.c_char_p),
                ("schedule", C.c_char_p), ("batch_count", C.c_int), ("strength", C.c_float),
                ("init_image", C.POINTER(Image)), ("mask", C.POINTER(Image)), ("progress", PROGRESS),
                ("user", C.c_void_p), ("cfg_sigma_lo", C.c_float), ("cfg_sigma_hi", C.c_float),
                ("cfg_rescale", C.c_float), ("hires_scale", C.c_float), ("hires_strength", C.c_float),
                ("hires_steps", C.c_int), ("hires_upscaler", C.c_char_p), ("clip_skip", C.c_int),
                ("init_resize_latent", C.c_int)]


def load_library(path):
    lib = C.CDLL(path)
    lib.ldm_load_params_init.argtypes = [C.POINTER(LoadParams)]
    lib.ldm_pipeline_load.argtypes = [C.POINTER(LoadParams)]
    lib.ldm_pipeline_load.restype = C.c_void_p
    lib.ldm_pipeline_free.argtypes = [C.c_void_p]
    lib.ldm_generate_params_init.argtypes = [C.POINTER(GenerateParams)]
    lib.ldm_generate.argtypes = [C.c_void_p, C.POINTER(GenerateParams), C.POINTER(C.POINTER(Image)), C.POINTER(C.c_int)]
    lib.ldm_free_images.argtypes = [C.POINTER(Image), C.c_int]
    lib.ldm_last_error.restype = C.c_char_p
    return lib


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--config")
    ap.add_argument("--vocab")
    ap.add_argument("-p", "--prompt", default="")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("-o", "--output", default="out.ppm")
    a = ap.parse_args()
    lib = load_library(a.lib)
    enc = lambda s: s.encode() if s else None

    lp = LoadParams()
    lib.ldm_load_params_init(C.byref(lp))
    lp.model_path, lp.config_path, lp.vocab_path = enc(a.model), enc(a.config), enc(a.vocab)
    pipe = lib.ldm_pipeline_load(C.byref(lp))
    if not pipe:
        sys.exit("error: " + lib.ldm_last_error().decode())

    gp = GenerateParams()
    lib.ldm_generate_params_init(C.byref(gp))
    gp.prompt, gp.steps, gp.seed = enc(a.prompt), a.steps, a.seed
    gp.progress = PROGRESS(lambda step, steps, secs, user: print(f"step {step}/{steps} {secs:.1f} s", file=sys.stderr))
    images, count = C.POINTER(Image)(), C.c_int()
    if lib.ldm_generate(pipe, C.byref(gp), C.byref(images), C.byref(count)) != 0:
        sys.exit("error: " + lib.ldm_last_error().decode())
    # copied out: images[0] is a view of memory that ldm_free_images releases
    w, h, ch = images[0].width, images[0].height, images[0].channels
    data = C.string_at(images[0].data, w * h * ch)
    lib.ldm_free_images(images, count)
    lib.ldm_pipeline_free(pipe)
    with open(a.output, "wb") as f:
        f.write(b"%s\n%d %d\n255\n" % (b"P6" if ch == 3 else b"P5", w, h))
        f.write(data)
    print(f"wrote {a.output} ({w}x{h})", file=sys.stderr)


if __name__ == "__main__":
    main()
