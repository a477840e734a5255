#!/usr/bin/env python3
"""The same work as `ldm bench` in diffusers on PyTorch 2.x (the peer CPU users
pick today): SD 1.5's UNet and VAE built from their config dicts with random
weights (no hub access), timed with the same warm-up/median rule. With
--runtime openvino the same modules run in OpenVINO instead (converted from
the diffusers module, compiled for the CPU with the same threads, fp32 or bf16
inference precision); its first call counts the compile, not the conversion
(an OpenVINO user converts once, offline). With --runtime ipex the diffusers
module goes through Intel's extension for PyTorch (ipex.optimize with the
work's dtype, counted in the first call; bf16 under autocast as diffusers'),
in an environment of its own
(bench/setup_ipex.sh: it pins an older PyTorch). Run by `ldm bench --peers-venv DIR`
with DIR/bin/python; bench/setup_peers.sh makes that environment (outside the
repository). Prints one line: RESULT {json}.
"""
import argparse
import json
import statistics
import sys
import time

import torch

UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4)


class UNetStep(torch.nn.Module):  # one UNet call on the cond + uncond batch, tensors in and out
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, t, ctx):
        return self.m(x, t, encoder_hidden_states=ctx).sample


class Decode(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z):
        return self.m.decode(z).sample


def module_and_inputs(work, runtime):
    """The work as a torch module and its inputs (a kernel-level work has none: an error)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    torch.manual_seed(0)
    base = work.replace("_bf16", "")
    side = 32 if base.endswith("256") else 64
    if base.startswith("unet"):
        m = UNetStep(UNet2DConditionModel(**UNET)).eval()
        return m, (torch.randn(2, 4, side, side), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768))
    if base.startswith("vae"):
        return Decode(AutoencoderKL(**VAE)).eval(), (torch.randn(1, 4, side, side),)
    raise SystemExit(f"peers_bench: {work} has no {runtime} form (unknown, or a kernel-level work)")


def work_fn(work):
    if work.replace("_bf16", "") == "attn4096":  # torch 2's fused scaled_dot_product_attention, as diffusers calls it
        torch.manual_seed(0)
        dt = torch.bfloat16 if work.endswith("_bf16") else torch.float32  # bf16 inputs, as ours
        q, k, v = (torch.randn(16, 4096, 40).to(dt) for _ in range(3))
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    m, inputs = module_and_inputs(work, "diffusers")
    return lambda: m(*inputs)


def openvino_fn(work, threads):
    """(compile, call): the work compiled by OpenVINO for the CPU; compile returns the call."""
    import openvino as ov
    m, inputs = module_and_inputs(work, "OpenVINO")
    with torch.no_grad():
        model = ov.convert_model(m, example_input=inputs)
    arrays = [t.numpy() for t in inputs]
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if work.endswith("_bf16") else "f32"}

    def compile_():
        request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        return lambda: request.infer(arrays)
    return compile_


def ipex_fn(work):
    """prepare: ipex.optimize on the work's module (it prepacks the weights); prepare returns the call."""
    import intel_extension_for_pytorch as ipex
    m, inputs = module_and_inputs(work, "ipex")

    def prepare():
        om = ipex.optimize(m, dtype=torch.bfloat16 if work.endswith("_bf16") else torch.float32)
        return lambda: om(*inputs)
    return prepare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", choices=["diffusers", "openvino", "ipex"], default="diffusers")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bf16 = a.work.endswith("_bf16")
    if a.runtime == "openvino":
        prepare = openvino_fn(a.work, a.threads)
    elif a.runtime == "ipex":
        prepare = ipex_fn(a.work)
    else:
        fn = work_fn(a.work)
        prepare = lambda: fn  # noqa: E731
    t0 = time.perf_counter()
    run = prepare()  # OpenVINO's compile, IPEX's optimize: part of the first call

    def call():  # OpenVINO's bf16 is its inference precision, not autocast
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and a.runtime != "openvino"):
            run()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    import diffusers
    info = {"median_s": statistics.median(times), "runs_s": times, "first_s": first, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention")}
    if a.runtime == "openvino":
        import openvino
        info["openvino"] = openvino.__version__
    if a.runtime == "ipex":
        import intel_extension_for_pytorch
        info["ipex"] = intel_extension_for_pytorch.__version__
    print("RESULT " + json.dumps(info))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
