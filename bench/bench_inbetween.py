"""Dual-directional SVD sampling: ``reference`` vs ``fused`` mode, speed and peak memory per fused step.

One fused step = the UNet work of one sampler step: both branches (forward + reverse with the rotated
forward maps), classifier-free guidance on, exactly as the sampler runs it (``_Denoiser``).
``reference`` runs one UNet call per branch (batch 2) and stores the 16 temporal attention maps between
them; ``fused`` runs one call (batch 4) in which each temporal layer computes the map once and applies it
to both halves, storing nothing.

Sections:

1. Map memory per step (computed from the SVD-xt UNet config, no weights): what ``reference`` keeps
   between its two UNet calls for 14 and 25 frames at 1024x576 (CFG batch 2), fp16 and fp32.
2. Random-weight UNets on this machine (CPU by default): a tiny one and a mid-size one (SVD's four levels
   and 16 temporal layers, fewer channels). Each (model, mode) runs in a fresh subprocess: warm-up step,
   then the timed steps; peak memory is the high-water-mark growth over warm-up and timed steps above
   the memory held before them (weights, inputs): CPU: VmHWM after resetting it via
   /proc/self/clear_refs, minus the RSS before; GPU: ``torch.cuda.max_memory_allocated`` minus the
   allocation before. Outputs of both modes are compared.
3. ``--real`` (GPU): the real-size UNet (random weights) at 1024x576, 25 frames, fp16.

Usage (from the repository root)::

    python bench/bench_inbetween.py            # tiny + mid-size on the CPU, a few minutes on 2 cores
    python bench/bench_inbetween.py --quick    # fewer steps, smaller mid-size input
    python bench/bench_inbetween.py --device cuda --real
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_THREADS,
    THREADS_HELP,
    header,
    proc_status,
    reset_hwm,
    set_threads,
    text_table,
)

from keyframe_propagation.pipelines.testing.svd import MID_UNET, TINY_UNET  # noqa: E402

REAL_UNET = "real"  # the shipped SVD-xt config (pipelines/configs/svd_xt/unet/config.json)


def unet_config(name: str) -> dict:
    from keyframe_propagation.pipelines.svd.single_file import CONFIG_DIR

    if name == "tiny":
        return dict(TINY_UNET)
    if name == "mid":
        return dict(MID_UNET)
    return {
        k: v for k, v in json.loads((CONFIG_DIR / "unet" / "config.json").read_text()).items() if k[0] != "_"
    }


# ----------------------------------------------------------------------------------------------
# 1. Map memory, computed
# ----------------------------------------------------------------------------------------------
def map_elements(config: dict, height: int, width: int, frames: int, batch: int = 2) -> list[tuple[str, int]]:
    """Elements of each temporal self-attention map (B*h*w*heads, F, F) for an image of height x width."""
    from diffusers import UNetSpatioTemporalConditionModel

    from keyframe_propagation.pipelines.svd.attention import temporal_attention_layers

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(config)
    levels = len(config["block_out_channels"])
    h0, w0 = height // 8, width // 8
    out = []
    for name in temporal_attention_layers(unet):
        part, _, rest = name.partition(".")
        if part == "mid_block":
            level = levels - 1
        else:
            i = int(rest.split(".")[0])
            level = i if part == "down_blocks" else levels - 1 - i
        h, w = -(-h0 // 2**level), -(-w0 // 2**level)
        heads = unet.get_submodule(name).heads
        out.append((name, batch * h * w * heads * frames * frames))
    return out


def section_map_memory() -> None:
    from diffusers import UNetSpatioTemporalConditionModel

    from keyframe_propagation.pipelines.svd.attention import reverse_param_names

    cfg = unet_config(REAL_UNET)
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(cfg)
    n_unet = sum(p.numel() for p in unet.parameters())
    sd = unet.state_dict()
    n_rev = sum(sd[n].numel() for n in reverse_param_names(unet))
    print("\n-- 1. weights held and temporal attention map memory per step, SVD-xt at 1024x576 (computed) --")
    print(
        f"  UNet {n_unet / 1e6:.0f}M parameters, reverse tensors {n_rev / 1e6:.1f}M "
        f"({len(reverse_param_names(unet))}); fp16 weights held: two UNets (the reference code's forward\n"
        f"  + deep copy) {2 * n_unet * 2 / 2**30:.2f} GiB, one UNet + reverse tensors (this pack, any mode) "
        f"{(n_unet + n_rev) * 2 / 2**30:.2f} GiB"
    )
    rows = []
    for frames in (14, 25):
        maps = map_elements(cfg, 576, 1024, frames)
        total, largest = sum(n for _, n in maps), max(n for _, n in maps)
        rows.append(
            [
                f"{frames} frames",
                len(maps),
                f"{total * 2 / 2**20:.0f}",
                f"{total * 4 / 2**20:.0f}",
                f"{largest * 2 / 2**20:.0f}",
                "0",
            ]
        )
    print(
        text_table(
            ["", "layers", "reference fp16 MiB", "reference fp32 MiB", "largest map fp16 MiB", "fused MiB"],
            rows,
        )
    )
    print(
        "  reference: all maps of the forward call (CFG batch 2) are kept until the reverse call; fused: no\n"
        "  map is kept across layers, and none is materialised (flip(A) V = flip_F(A flip_F(V)) lets one\n"
        "  attention call serve both halves; a math SDPA path holds one layer's map inside the call)."
    )


# ----------------------------------------------------------------------------------------------
# 2./3. Timed steps (child process)
# ----------------------------------------------------------------------------------------------


def child(args) -> None:
    """Run steps of one (model, mode) and print a JSON line."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

    from keyframe_propagation.pipelines.svd.model import InbetweenModel
    from keyframe_propagation.pipelines.svd.sampler import InbetweenSettings, _Cond, _Denoiser
    from keyframe_propagation.pipelines.svd.single_file import CONFIG_DIR

    set_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    cfg = unet_config(args.model)
    unet = torch.nn.Module.to(UNetSpatioTemporalConditionModel.from_config(cfg), device, dtype)
    with torch.no_grad():
        for p in unet.parameters():  # random, not the mostly-zero default init
            p.normal_(0, 0.02)
    m = InbetweenModel(unet, torch.nn.Identity(), torch.nn.Identity(), json.loads(
        (CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text()
    ))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    m.state.reverse.update(
        {n: (w + 0.02 * torch.randn(w.shape, generator=g).to(w)) for n, w in m.unet.state_dict().items()
         if n in m.param_names}
    )  # fmt: skip
    F, h, w = args.frames, args.height // 8, args.width // 8
    D = cfg["cross_attention_dim"]
    cond = [
        _Cond(
            torch.randn(1, 1, D, generator=g).to(device, dtype),
            torch.randn(1, 4, h, w, generator=g).to(device, dtype),
        )
        for _ in range(2)
    ]  # noqa: E501
    ids = torch.tensor([[6.0, 127.0, 0.02]], device=device, dtype=dtype)
    s = InbetweenSettings(num_frames=F, mode=args.mode)
    den = _Denoiser(m, s, cond[0], cond[1], F, ids)
    sched = EulerDiscreteScheduler.from_config(m.scheduler_config)
    sched.set_timesteps(50, device=device)
    z = (torch.randn(1, F, 4, h, w, generator=g) * 10).to(device, dtype)
    t = sched.timesteps[10]

    def step():
        sched._step_index = 10
        with torch.no_grad():
            return den(z, t, sched)

    # Peak memory counts from here (weights and inputs in place), warm-up included: a CPU allocator keeps
    # freed memory, so growth measured after a warm-up would miss most of a step's activations.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        hwm_ok = reset_hwm()
        base = proc_status("VmRSS") * 1024 * 1024
    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = min(times)  # the least disturbed step: this machine may be shared
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated growth"
    else:
        peak = (proc_status("VmHWM") * 1024 * 1024 - base) if hwm_ok else None
        how = "VmHWM growth"
    torch.save(out.float().cpu(), args.save)
    print(json.dumps({"seconds": dt, "peak": peak, "how": how}))


def run_child(model: str, mode: str, a, height: int, width: int, frames: int, steps: int, out: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--model", model, "--mode", mode, "--device", a.device,
        "--dtype", a.dtype, "--height", str(height), "--width", str(width), "--frames", str(frames),
        "--steps", str(steps), "--threads", str(a.threads), "--save", str(out),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"child {model}/{mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def section_timed(a, cases: list[tuple[str, int, int, int, int]], title: str) -> None:
    print(f"\n-- {title} --")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, height, width, frames, steps in cases:
            res = {}
            for mode in ("reference", "fused"):
                res[mode] = run_child(
                    model, mode, a, height, width, frames, steps, Path(tmp) / f"{model}_{mode}.pt"
                )
            diff = float(
                (
                    torch.load(Path(tmp) / f"{model}_reference.pt", weights_only=True)
                    - torch.load(Path(tmp) / f"{model}_fused.pt", weights_only=True)
                )
                .abs()
                .max()
            )  # noqa: E501
            r, f = res["reference"], res["fused"]
            mib = lambda b: "n/a" if b is None else f"{b / 2**20:.0f}"  # noqa: E731
            ratio_m = f"{f['peak'] / r['peak']:.2f}" if r["peak"] and f["peak"] is not None else "n/a"
            rows.append(
                [
                    f"{model} {width}x{height}x{frames}",
                    f"{r['seconds']:.3f}",
                    f"{f['seconds']:.3f}",
                    f"{r['seconds'] / f['seconds']:.2f}x",
                    mib(r["peak"]),
                    mib(f["peak"]),
                    ratio_m,
                    f"{diff:.1e}",
                ]
            )
            how = r["how"]
    print(
        text_table(
            [
                "UNet input",
                "ref s/step",
                "fused s/step",
                "speed-up",
                "ref peak MiB",
                "fused peak MiB",
                "mem ratio",
                "max |diff|",
            ],
            rows,
        )  # fmt: skip
    )
    print(
        f"  {a.device}, {a.dtype}, {a.threads or 'default'} threads; s/step = fastest timed step; "
        f"peak = {how} over the steps"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and a smaller mid-size input")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="", help="fp32 (CPU default), fp16 (CUDA default), bf16")
    p.add_argument("--real", action="store_true", help="also the real-size UNet at 1024x576x25 (GPU)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    # child process options
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=14, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--save", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.dtype = a.dtype or ("fp16" if a.device.startswith("cuda") else "fp32")
    if a.child:
        child(a)
        return
    set_threads(a.threads)
    header("dual-directional SVD sampling: reference vs fused")
    section_map_memory()
    if a.quick:
        cases = [("tiny", 128, 128, 8, 3), ("mid", 128, 128, 14, 2)]
    else:
        cases = [("tiny", 256, 256, 14, 5), ("mid", 256, 256, 14, 3)]
    section_timed(a, cases, f"2. one fused step (both branches, CFG), random UNets on {a.device}")
    if a.real:
        if not a.device.startswith("cuda"):
            print("\n-- 3. real-size UNet: skipped (needs --device cuda) --")
        else:
            section_timed(
                a, [(REAL_UNET, 576, 1024, 25, 3)], "3. real-size SVD-xt UNet (random weights) 1024x576x25"
            )


if __name__ == "__main__":
    main()
