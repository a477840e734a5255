#!/usr/bin/env python3
"""The original PyTorch code doing the same work as `ldm bench`, for side-by-side ratios.

`ldm bench --reference CHECKOUT` runs this with a checkout of Stability-AI/stablediffusion or
CompVis/latent-diffusion (never part of this repository), once as is and once with tcmalloc in
LD_PRELOAD. The fashion training works need Stability's tree (v-prediction) with CompVis's
ldm/modules/losses and taming-transformers' taming/ package copied in (bench/setup_reference.sh). Needs python3-torch (Debian's is libtorch 1.13, the same kernels as our build). When
einops is not installed, a small stand-in below covers the patterns the reference modules use.
Prints one line: RESULT {"median_s": ..., "runs_s": [...]}.
"""
import argparse
import importlib.machinery
import json
import os
import statistics
import sys
import time
import types

import yaml


def _groups(side):
    """'b (h w) c' -> [(False, ['b']), (True, ['h', 'w']), (False, ['c'])]; '()' -> (True, [])."""
    out, cur, depth = [], None, 0
    for tok in side.replace("(", " ( ").replace(")", " ) ").split():
        if tok == "(":
            cur, depth = [], 1
        elif tok == ")":
            out.append((True, cur))
            cur, depth = None, 0
        elif depth:
            cur.append(tok)
        else:
            out.append((False, [tok]))
    return out


def _einops(tensor, pattern, sizes, allow_new):
    left, right = (_groups(s) for s in pattern.split("->"))
    # the ellipsis stands for the dimensions no other group takes
    n_ell = tensor.dim() - (len(left) - 1) if any("..." in g for _, g in left) else 0

    def expand(groups):
        names = [f"_e{i}" for i in range(n_ell)]
        res = []
        for paren, g in groups:
            if not paren and g == ["..."]:  # a bare ellipsis: one group per dimension
                res.extend([n] for n in names)
            else:  # inside parentheses: flattened into the group
                res.append([x for a in g for x in (names if a == "..." else [a])])
        return res

    left, right = expand(left), expand(right)
    known = dict(sizes)
    for g, size in zip(left, tensor.shape):
        unknown = [a for a in g if a not in known]
        prod = 1
        for a in g:
            prod *= known.get(a, 1)
        if len(unknown) == 1:
            known[unknown[0]] = size // prod
    flat_left = [a for g in left for a in g]
    t = tensor.reshape([known[a] for a in flat_left])
    flat_right = [a for g in right for a in g]
    order = [flat_left.index(a) for a in flat_right if a in flat_left]
    t = t.permute(order)
    if allow_new:  # repeat: new axes are inserted and expanded
        shape_now, idx = [], 0
        for a in flat_right:
            if a in flat_left:
                shape_now.append(t.shape[idx])
                idx += 1
            else:
                shape_now.append(1)
        t = t.reshape(shape_now).expand([known[a] for a in flat_right])
    out_shape = []
    for g in right:
        p = 1
        for a in g:
            p *= known[a]
        out_shape.append(p)
    return t.reshape(out_shape)


def install_einops_stand_in():
    m = types.ModuleType("einops")
    m.rearrange = lambda t, pattern, **sizes: _einops(t, pattern, sizes, False)
    m.repeat = lambda t, pattern, **sizes: _einops(t, pattern, sizes, True)
    sys.modules["einops"] = m


def install_stand_ins():
    """Modules the reference imports at the top of files whose training step never uses them (Lightning's
    logging, image grids, text encoders): empty stand-ins where they are not installed."""
    import torch

    def stub(name, **attrs):
        try:
            __import__(name)
            for k in attrs:  # transformers 5 imports, then fails lazily on a name (it checks torchvision's spec)
                getattr(sys.modules[name], k)
            return
        except Exception:  # not installed, or broken by an earlier stand-in
            for sub in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[sub]
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
                # a spec, as real modules have: PyTorch 2's dynamo (imported by DDP) looks one up
                sys.modules[sub].__spec__ = importlib.machinery.ModuleSpec(sub, None)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
        for k, v in attrs.items():
            setattr(sys.modules[name], k, v)

    class LightningModule(torch.nn.Module):
        device = torch.device("cpu")
        global_step = 0

        def log(self, *a, **k):
            pass

        def log_dict(self, *a, **k):
            pass

    stub("pytorch_lightning", LightningModule=LightningModule)
    stub("pytorch_lightning.utilities.distributed", rank_zero_only=lambda f: f)
    stub("torchvision.utils", make_grid=None)
    stub("omegaconf", ListConfig=list)
    stub("omegaconf.listconfig", ListConfig=list)
    stub("tqdm", tqdm=lambda x, *a, **k: x)
    stub("kornia")
    stub("open_clip")
    stub("transformers", T5Tokenizer=None, T5EncoderModel=None, CLIPTokenizer=None, CLIPTextModel=None)
    # taming's LPIPS loads VGG weights from the network when built; the fashion config's perceptual weight is 0
    lpips = types.ModuleType("taming.modules.losses.lpips")
    lpips.LPIPS = torch.nn.Module
    sys.modules["taming.modules.losses.lpips"] = lpips


def forward_autocast(bf16):
    """Lightning's precision="bf16" on the CPU: the forward under torch.autocast, backward outside."""
    import contextlib
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def training_step_module(m):
    """What Lightning's DDP wraps: a module whose forward is the LightningModule's training_step."""
    import torch

    class TrainingStep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch, optimizer_idx):
            return self.m.training_step(batch, 0, optimizer_idx)

    return TrainingStep(m)


def data_parallel(module, find_unused):
    """DistributedDataParallel over Gloo when this process is one of --ranks (Lightning's strategy="ddp")."""
    import torch

    if not torch.distributed.is_initialized():
        return module
    return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused)


def fashion_ae_step(config, runs, bf16=False):
    """The reference's AutoencoderKL and LPIPSWithDiscriminator built from our YAML, one training step as
    Lightning runs it with two optimizers: training_step for the autoencoder's Adam, then for the
    discriminator's (its loss is 0 times the hinge before disc_start, as the reference computes it).
    As ranks: Lightning 1.x's DDP (find_unused_parameters=True: each optimizer's step leaves the other's
    parameters without a gradient), each rank on its share of the batch."""
    import torch
    from ldm.util import instantiate_from_config

    cfg = yaml.safe_load(open(config))
    # ours only: the reference's AutoencoderKL has no schedule (it scales the rate, not the step's work)
    cfg["model"]["params"].pop("scheduler_config", None)
    m = instantiate_from_config(cfg["model"])
    bs = cfg["data"]["params"]["batch_size"]
    m.learning_rate = cfg["model"]["base_learning_rate"] * bs
    m.train()
    opts, _ = m.configure_optimizers()
    res = m.encoder.resolution
    local = bs // world_size()
    batch = {m.image_key: torch.rand(local, res, res, m.encoder.conv_in.in_channels) * 2 - 1}
    train_step = data_parallel(training_step_module(m), find_unused=True)

    def step():
        for i, opt in enumerate(opts):
            opt.zero_grad(set_to_none=True)
            with forward_autocast(bf16):
                loss = train_step(batch, i)
            loss.backward()
            opt.step()

    r = median_time(step, max(5, runs * 3))
    r["samples_per_s"] = bs / r["median_s"]
    return r


def fashion_ldm_step(config, runs, bf16=False):
    """The reference's LatentDiffusion built from our YAML (first stage random), one training step:
    conditioning, p_losses (with its VLB term), backward, AdamW over the UNet, on one latent batch.
    As ranks: the UNet in DistributedDataParallel (its gradients only, as ours), each rank on its share."""
    import torch
    from ldm.util import instantiate_from_config

    cfg = yaml.safe_load(open(config))
    model = cfg["model"]
    model["params"]["first_stage_config"]["params"].pop("ckpt_path", None)
    # ours (Min-SNR weighting): the reference has no such key; its loss weight is a few
    # elementwise ops on the batch, nothing the step's time would show
    model["params"].pop("snr_gamma", None)
    m = instantiate_from_config(model)
    m.train()
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-4)
    m.model.diffusion_model = data_parallel(m.model.diffusion_model, find_unused=False)
    bs = cfg["data"]["params"]["batch_size"]
    local = bs // world_size()
    p = model["params"]
    z = torch.randn(local, p["channels"], p["image_size"], p["image_size"])
    batch = {p["cond_stage_key"]: torch.randint(0, 10, (local,))}

    def step():
        opt.zero_grad(set_to_none=True)
        with forward_autocast(bf16):
            c = m.get_learned_conditioning(batch)
            t = torch.randint(0, m.num_timesteps, (local,))
            loss, _ = m.p_losses(z, c, t)
        loss.backward()
        opt.step()

    r = median_time(step, max(5, runs * 3))
    r["samples_per_s"] = bs / r["median_s"]
    return r


def world_size():
    import torch

    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def start_ranks(a):
    """--ranks N: this process is rank 0 of N on loopback; ranks 1..N-1 are this script again with --rank.
    Threads split between them (as ldm's launcher: cores / N each). Returns the other ranks' processes."""
    import socket
    import subprocess
    import torch

    others = []
    if a.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            a.port = s.getsockname()[1]
        for r in range(1, a.ranks):
            others.append(subprocess.Popen([sys.executable] + sys.argv + ["--rank", str(r), "--port", str(a.port)],
                                           stdout=subprocess.DEVNULL))
    torch.set_num_threads(max(1, (a.threads or os.cpu_count()) // a.ranks))
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank,
                                         world_size=a.ranks)
    return others


def median_time(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "runs_s": times}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (ldm bench passes its own count)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "stable-diffusion",
                                                     "v1-inference.yaml"))
    ap.add_argument("--fashion-config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "fashion",
                                                             "ldm.yaml"))
    ap.add_argument("--fashion-ae-config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "fashion",
                                                                "autoencoder.yaml"))
    ap.add_argument("--ranks", type=int, default=1, help="training works: N data-parallel ranks (DDP over Gloo)")
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, a.repo)
    try:
        import einops  # noqa: F401
    except ImportError:
        install_einops_stand_in()
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    others = start_ranks(a) if a.ranks > 1 and a.work.startswith("train_fashion") else []
    torch.manual_seed(0)
    params = yaml.safe_load(open(a.config))["model"]["params"]
    install_stand_ins()
    if a.work in ("train_fashion", "train_fashion_bf16"):
        r = fashion_ldm_step(a.fashion_config, a.runs, a.work.endswith("_bf16"))
    elif a.work in ("train_fashion_ae", "train_fashion_ae_bf16"):
        r = fashion_ae_step(a.fashion_ae_config, a.runs, a.work.endswith("_bf16"))
    elif a.work.startswith("unet") or a.work.startswith("train"):
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        up = dict(params["unet_config"]["params"])
        up["use_checkpoint"] = False
        unet = UNetModel(**up)
        if a.work.startswith("unet"):
            lat = 32 if a.work == "unet256" else 64
            unet.eval()
            x, ctx = torch.randn(2, 4, lat, lat), torch.randn(2, 77, 768)
            t = torch.full((2,), 500.0)
            with torch.no_grad():
                r = median_time(lambda: unet(x, t, context=ctx), a.runs)
        else:
            unet.train()
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
            x, ctx, target = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 768), torch.randn(1, 4, 32, 32)
            t = torch.full((1,), 500.0)

            def step():
                opt.zero_grad()
                torch.nn.functional.mse_loss(unet(x, t, context=ctx), target).backward()
                opt.step()

            r = median_time(step, max(2, a.runs - 1))
    elif a.work.startswith("vae"):
        from ldm.modules.diffusionmodules.model import Decoder

        fp = params["first_stage_config"]["params"]
        dec = Decoder(**fp["ddconfig"]).eval()
        post_quant = torch.nn.Conv2d(fp["embed_dim"], fp["ddconfig"]["z_channels"], 1)
        lat = 32 if a.work == "vae256" else 64
        z = torch.randn(1, 4, lat, lat)
        with torch.no_grad():
            r = median_time(lambda: dec(post_quant(z)), a.runs)  # AutoencoderKL.decode
    else:
        raise SystemExit(f"unknown work {a.work}")
    r["threads"] = torch.get_num_threads()
    r["ranks"] = world_size()
    for rank, p in enumerate(others, start=1):
        if p.wait() != 0:
            raise SystemExit(f"rank {rank} exited with status {p.returncode}")
    if a.rank == 0:
        print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
