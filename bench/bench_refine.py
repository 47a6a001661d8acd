"""Cost of multiscale refinement (SPEC B) vs a plain LaMa pass, on CPU, with the Big-LaMa-shaped model.

No real weights are needed: the generator has Big-LaMa's exact layout (50,975,875 parameters), random
weights and BatchNorm statistics calibrated on random images (``random_lama``), so its activations and
output spread like a trained network's. Speeds are therefore those of the real model; the *values* of
the losses are not those of real weights, but every schedule is measured on the same model, image and
hole, so they compare with each other. The image is a smooth synthetic texture with an elliptic hole
covering 7.5% of it (an object to remove), off-centre.

Per size (512^2 and 1024^2), all in one run and side by side:

* plain: one LaMa pass at the full size (``inpaint``), the unit of the "x plain" ratios;
* reference: ``multiscale_refine`` with the defaults (paper: 17.5x a plain pass on an RTX A5000);
* crop mode, early stopping, both, and both with a 3x learning rate (the optional speed-ups), with
  each schedule's final loss (its own last loss) and its *hole loss*: the loss's second term
  (downscaled result vs the coarse level, inside the eroded hole) evaluated on the final result
  against the coarse level all schedules share, so that schedules, crop mode included, are compared
  at equal loss; "d ref" = mean |result - reference result| inside the hole;
* peak memory of the refinement with and without activation checkpointing (fresh subprocesses,
  2 passes at the finest level: the peak is the first backward).

A 512^2 image is a single pyramid level at the default min_side 512, so its refinement is one plain
pass; the 512^2 schedules are also run with min_side 256 (two levels, refining at 512^2).

On 2 shared CPU cores one refinement pass at 1024^2 (forward + backward of the rear) takes about a
minute, so the reference's 15 passes (~15 min) do not fit a 10-minute run: by default the reference
and crop rows at 1024^2 run ``--iters`` passes (3) and the 15-pass time is projected from the measured
per-pass time (printed as such) and the full-image early-stopping row is left out; ``--full`` runs
every schedule with all 15 passes (about an hour).

Usage (from the repository root)::

    python bench/bench_refine.py            # about 10 minutes on 2 CPU cores
    python bench/bench_refine.py --quick    # about 4 minutes: fewer schedules, no subprocesses
    python bench/bench_refine.py --full     # every schedule with 15 passes, memory at 1024^2 too
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from common import (
    DEFAULT_THREADS,
    THREADS_HELP,
    header,
    maxrss_mib,
    print_result,
    proc_status,
    reset_hwm,
    run_child,
    set_threads,
    text_table,
)

from keyframe_propagation.pipelines.refine.lama import FFCResNetGenerator
from keyframe_propagation.pipelines.refine.multiscale import (
    RefineConfig,
    RefineResult,
    build_pyramid,
    downscale_image,
    eroded_hole,
    multiscale_refine,
)
from keyframe_propagation.pipelines.testing.lama import random_lama

REFERENCE_PASSES = 15
# --smoke (a quick check that the script runs): tiny model, every size and min_side divided by 8.
SMOKE = {"scale": 1, "model": {}}


def px(n: int) -> int:
    return n // SMOKE["scale"]


def make_model():
    return random_lama(seed=0, **SMOKE["model"])


# (name, RefineConfig overrides): the reference and the optional speed-ups, alone and together.
SCHEDULES = [
    ("reference", {}),
    ("crop", {"crop": True}),
    ("early stop", {"early_stop": True}),
    ("crop + early stop", {"crop": True, "early_stop": True}),
    ("crop + early stop + lr x3", {"crop": True, "early_stop": True, "lr": 0.006}),
    ("crop + early stop (patience 3) + lr x3", {"crop": True, "early_stop": True, "patience": 3, "lr": 6e-3}),
    ("crop + lr x3, 12 passes", {"crop": True, "lr": 0.006, "n_iters": 12}),
]


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def make_input(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, S, S) smooth texture in [0, 1] and (1, 1, S, S) elliptic hole (7.5% of the image)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, size, size)
    for cells, amp in ((6, 0.6), (24, 0.25), (96, 0.15)):
        noise = torch.rand(1, 3, cells, cells, generator=g)
        img += amp * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    img = img.clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - 0.55 * size) / (0.2 * size)) ** 2 + ((xx - 0.4 * size) / (0.12 * size)) ** 2 < 1
    return img, inside.float()[None, None]


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float
    passes: int  # forward passes at the finest level
    final_loss: float
    hole_loss: float
    result: torch.Tensor
    first_pass_at: float  # seconds from the start to the finest level's first pass
    per_pass: float  # mean seconds between the finest level's passes (backward + step + forward)
    projected: bool = False


def plain_pass(
    model: FFCResNetGenerator, image: torch.Tensor, mask: torch.Tensor
) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.inpaint(image, mask)
    return time.perf_counter() - t0, out


def hole_loss(result: torch.Tensor, coarse: torch.Tensor | None, fine_mask: torch.Tensor) -> float:
    """The refinement loss's second term evaluated on a final result (nan for one-level pyramids)."""
    if coarse is None:
        return float("nan")
    hole = eroded_hole(fine_mask)
    d = (downscale_image(result) - coarse).abs() * hole
    return float(d.sum() / (hole.sum() * 3).clamp_min(1))


def run_schedule(
    name: str,
    model: FFCResNetGenerator,
    image: torch.Tensor,
    mask: torch.Tensor,
    cfg: RefineConfig,
    coarse: torch.Tensor | None,
) -> Run:
    stamps: list[tuple[float, str]] = []
    gc.collect()
    t0 = time.perf_counter()
    res: RefineResult = multiscale_refine(
        model, image, mask, cfg, progress=lambda d, t, text: stamps.append((time.perf_counter(), text))
    )
    seconds = time.perf_counter() - t0
    passes = len(res.losses[-1]) if len(res.losses) > 1 else 1
    # The finest level's optimisation passes are the last `passes` "iteration" reports.
    fine = [t for t, text in stamps if "iteration" in text][-passes:]
    first = fine[0] - t0 if fine else seconds
    per_pass = (fine[-1] - fine[0]) / (len(fine) - 1) if len(fine) > 1 else float("nan")
    return Run(
        name=name,
        seconds=seconds,
        passes=passes,
        final_loss=res.final_loss,
        hole_loss=hole_loss(
            res.image, coarse, build_pyramid(image, mask, cfg.min_side, cfg.max_scales)[1][-1]
        ),
        result=res.image,
        first_pass_at=first,
        per_pass=per_pass,
    )


def projected_seconds(run: Run, passes: int = REFERENCE_PASSES) -> float:
    """Time of the same schedule with ``passes`` passes, from its measured per-pass time."""
    return run.first_pass_at + (passes - 1) * run.per_pass


# ----------------------------------------------------------------------------------------------
# Memory (subprocesses)
# ----------------------------------------------------------------------------------------------


def child(spec: dict) -> dict:
    """Peak memory of one refinement; spec = {"size", "min_side", "segments", "passes"}."""
    if spec.get("smoke"):
        SMOKE.update(scale=8, model={"ngf": 8, "n_blocks": 2})
    model = make_model()
    image, mask = make_input(px(spec["size"]))
    cfg = RefineConfig(
        n_iters=spec["passes"], min_side=px(spec["min_side"]), checkpoint_segments=spec["segments"]
    )
    gc.collect()
    base_maxrss = maxrss_mib()
    hwm_ok = reset_hwm()
    base_rss = proc_status("VmRSS")
    t0 = time.perf_counter()
    multiscale_refine(model, image, mask, cfg)
    wall = time.perf_counter() - t0
    hwm = proc_status("VmHWM") if hwm_ok else None
    growth = (hwm - base_rss) if (hwm is not None and base_rss is not None) else maxrss_mib() - base_maxrss
    return {**spec, "seconds": wall, "growth_mib": growth, "base_rss_mib": base_rss}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def fmt(x: float, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def schedules_table(title: str, plain_s: float, runs: list[Run], ref: Run, mask: torch.Tensor) -> None:
    print(f"\n{title}")
    rows = [["plain LaMa pass", "1", f"{plain_s:.1f}", "1.0", "-", "-", "-"]]
    hole = (mask > 0.5).expand_as(ref.result)
    for r in runs:
        d_ref = "-" if r is ref else fmt(float((r.result - ref.result)[hole].abs().mean()))
        secs = f"{r.seconds:.1f}"
        ratio = f"{r.seconds / plain_s:.1f}"
        if r.projected:
            secs += f" (15 passes: ~{projected_seconds(r):.0f})"
            ratio += f" (~{projected_seconds(r) / plain_s:.1f})"
        rows.append([r.name, str(r.passes), secs, ratio, fmt(r.final_loss), fmt(r.hole_loss, 5), d_ref])
    print(text_table(["schedule", "passes", "seconds", "x plain", "final loss", "hole loss", "d ref"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reference and crop only, no memory subprocesses")
    ap.add_argument("--full", action="store_true", help="all schedules with 15 passes; memory at 1024^2")
    ap.add_argument("--iters", type=int, default=3, help="passes of the reference/crop rows at 1024^2")
    ap.add_argument("--size", choices=("both", "512", "1024"), default="both", help="which sizes to run")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.smoke:
        SMOKE.update(scale=8, model={"ngf": 8, "n_blocks": 2})
    if args.child:
        print_result(child(json.loads(args.child)))
        return
    t_start = time.perf_counter()
    header("Multiscale refinement (SPEC B) on CPU, Big-LaMa-shaped random model")
    model = make_model()
    n_params = sum(p.numel() for p in model.parameters())
    d = RefineConfig(min_side=px(512))
    print(f"model: FFCResNetGenerator, {n_params:,} parameters (BatchNorm calibrated on random images)")
    print(
        f"image: synthetic texture, elliptic hole 7.5% of the image; defaults n_iters {d.n_iters}, "
        f"lr {d.lr}, min_side {d.min_side}, max_scales {d.max_scales}, px_budget {d.px_budget:,}; "
        f"crop_margin {d.crop_margin}, early stop patience {d.patience} / {d.min_improvement:.1%}"
    )
    plain_pass(model, *make_input(px(128)))  # warm-up

    summary = []
    # ---------------- 512^2
    if args.size in ("both", "512"):
        img, mask = make_input(px(512))
        plain512 = min(plain_pass(model, img, mask)[0] for _ in range(2))  # best of 2: a shared machine
        ref512 = run_schedule("reference (1 level)", model, img, mask, d, None)
        print(
            f"\n512x512: plain pass {plain512:.1f} s; reference refinement {ref512.seconds:.1f} s "
            f"= {ref512.seconds / plain512:.2f}x plain (one pyramid level at min_side 512: a plain pass)"
        )
        summary.append(("512^2 reference", ref512.seconds / plain512))
        if args.full:
            ims, ms = build_pyramid(img, mask, px(256), 3)
            with torch.no_grad():
                coarse = model.inpaint(ims[0], ms[0])
            base = RefineConfig(min_side=px(256))
            runs = [
                run_schedule(name, model, img, mask, replace(base, **kw), coarse) for name, kw in SCHEDULES
            ]
            schedules_table(
                "512x512 with min_side 256 (2 levels, refined at 512x512):", plain512, runs, runs[0], mask
            )
            for r in runs:
                summary.append((f"512^2 min_side 256 {r.name}", r.seconds / plain512))

    # ---------------- 1024^2
    if args.size in ("both", "1024"):
        img, mask = make_input(px(1024))
        plain1024, _ = plain_pass(model, img, mask)
        ims, ms = build_pyramid(img, mask, px(512), 3)
        with torch.no_grad():
            coarse = model.inpaint(ims[0], ms[0])
        n = REFERENCE_PASSES if args.full else (2 if args.quick else args.iters)
        runs = []
        for name, kw in SCHEDULES:
            if args.quick and name not in ("reference", "crop"):
                continue
            if not args.full and name == "early stop":
                continue  # a full-image schedule: too slow for the default run on this CPU
            capped = name in ("reference", "crop") and n != REFERENCE_PASSES
            cfg = replace(d, **kw) if not capped else replace(d, n_iters=n, **kw)
            run = run_schedule(name + (f", {n} passes" if capped else ""), model, img, mask, cfg, coarse)
            run.projected = capped
            runs.append(run)
        title = "1024x1024 (2 levels: 512 plain, 1024 refined)"
        if n != REFERENCE_PASSES:
            title += (
                f"; the reference and crop rows run {n} of the 15 passes on this CPU, '15 passes: ~' is "
                "projected from their measured per-pass time"
            )
        schedules_table(title + ":", plain1024, runs, runs[0], mask)
        for r in runs:
            secs = projected_seconds(r) if r.projected else r.seconds
            summary.append((f"1024^2 {r.name}", secs / plain1024))

    # ---------------- memory
    if not args.quick:
        specs = []
        if args.size in ("both", "512"):
            specs += [dict(size=512, min_side=256, segments=s, passes=2, smoke=args.smoke) for s in (0, 9)]
        if args.full and args.size in ("both", "1024"):
            specs += [dict(size=1024, min_side=512, segments=s, passes=2, smoke=args.smoke) for s in (0, 9)]
        rows = []
        for spec in specs:
            r = run_child(__file__, spec, args.threads)
            if r is None:
                continue
            mp = px(spec["size"]) ** 2 / 1e6
            rows.append(
                [
                    f"{spec['size']}^2 (refined at {spec['size']}^2)",
                    "9 segments" if spec["segments"] else "off",
                    f"{r['growth_mib']:.0f}",
                    f"{r['growth_mib'] / mp:.0f}",
                    f"{r['seconds']:.1f}",
                ]
            )
        print("\npeak memory of the refinement (subprocess, 2 passes; peak RSS growth during the call):")
        print(text_table(["size", "checkpointing", "peak MiB", "MiB per MP", "seconds"], rows))

    print("\nsummary (x a plain pass at the same size; ~ = projected to 15 passes):")
    for name, ratio in summary:
        print(f"  {name:<46s} {ratio:6.1f}x")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
