"""Object-removal quality on real footage: the zero-download default vs per-frame OpenCV Telea.

Holes are taken from ANOTHER clip (or moved/flipped), so they do not hide real objects and the original
frames are the ground truth inside them. Hole pixels are set to grey in the input, so no method (and no
flow estimate) sees the truth. Metrics, per case:

* PSNR inside the hole over all hole pixels of all frames (``psnr_in_mask``), also split into the part
  that some other frame shows ("seen") and the part no frame shows ("unseen", Telea fallback);
* temporal warping error inside the hole: output t+1 warped onto t with the ground-truth flow t -> t+1
  (DIS medium on the original frames), mean |out_t - warp(out_t+1)| in 8-bit levels over hole pixels of
  frame t where that flow is forward-backward consistent (< 1 px); the truth itself gives the floor;
* seconds per frame of each method (the default includes its DIS flow estimation).

Usage (from the repository root)::

    python bench/bench_removal.py            # cases A, B, C (about 2-3 minutes on 2 CPU cores)
    python bench/bench_removal.py --quick    # first 24 frames of each case
    python bench/bench_removal.py --sweep    # PropagationConfig grid on cases A and B
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    CAR,
    CAR_LOGO,
    DEFAULT_THREADS,
    OUT_DIR,
    TENNIS,
    THREADS_HELP,
    frame_files,
    header,
    load_clip,
    load_mask_clip,
    mask_files,
    md_table,
    read_mask,
    require_data,
    save_panel,
    set_threads,
    show_hole,
    text_table,
)

from keyframe_propagation.pipelines.flow import FlowEstimator, compute_flows, fb_error
from keyframe_propagation.pipelines.ops import warp
from keyframe_propagation.pipelines.propagate import (
    PropagationConfig,
    propagate_fill,
    telea_fill,
)
from keyframe_propagation.pipelines.testing.synthetic import psnr_in_mask

CAR_SIZE = (270, 486)  # running_car 972x540 downscaled by 2 (INTER_AREA) for speed
QUICK_FRAMES = 24
GREY = 0.5


@dataclass
class Case:
    key: str
    title: str
    how: list[str]
    truth: torch.Tensor  # (T, H, W, 3) original frames
    holes: torch.Tensor  # (T, H, W) 1 = hole

    @property
    def inputs(self) -> torch.Tensor:
        """The frames with the hole greyed out: what the methods get."""
        h = self.holes[..., None]
        return self.truth * (1 - h) + GREY * h


def case_a(root: Path, n: int | None) -> Case:
    files, mfiles = frame_files(root, TENNIS), mask_files(root, TENNIS)
    if n:
        files = files[:n]
    player = load_mask_clip(mfiles)
    # Tennis's own masks, time-reversed and flipped horizontally AND vertically: the hole then moves
    # over the banner/fence, away from the player (flipping horizontally only overlaps him ~18 %).
    holes = player.flip(0).flip(1).flip(2).contiguous()[: len(files)]
    player = player[: len(files)]
    overlap = float((holes * player).sum() / holes.sum())
    return Case(
        "A",
        f"{TENNIS}: {len(files)} frames at 432x240",
        [
            "holes: tennis's own masks time-reversed and flipped horizontally and vertically",
            f"(moving hole over banner/fence; {100 * overlap:.1f} % of hole pixels overlap the player's "
            "mask)",
        ],
        load_clip(files),
        holes,
    )


def case_b(root: Path, n: int | None) -> Case:
    mfiles = mask_files(root, TENNIS)
    count = min(len(mfiles), len(frame_files(root, CAR)))
    if n:
        count = min(count, n)
    files = frame_files(root, CAR)[:count]
    return Case(
        "B",
        f"{CAR}: first {count} frames, 972x540 downscaled to {CAR_SIZE[1]}x{CAR_SIZE[0]} (INTER_AREA)",
        ["holes: tennis masks (player + shadow) resized to that size (nearest), same frame order"],
        load_clip(files, CAR_SIZE),
        load_mask_clip(mfiles[:count], CAR_SIZE),
    )


def case_c(root: Path, n: int | None) -> Case:
    files = frame_files(root, CAR)
    if n:
        files = files[:n]
    logo = read_mask(root / CAR / CAR_LOGO, CAR_SIZE)
    return Case(
        "C",
        f"{CAR}: {len(files)} frames, downscaled to {CAR_SIZE[1]}x{CAR_SIZE[0]} (INTER_AREA)",
        [f"hole: static logo {CAR_LOGO} resized (nearest); background revealed by camera motion"],
        load_clip(files, CAR_SIZE),
        logo.expand(len(files), -1, -1).contiguous(),
    )


CASES = {"A": case_a, "B": case_b, "C": case_c}


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


@dataclass
class TruthFlow:
    """Ground-truth flow t -> t+1 (DIS medium on the original frames) and where it is consistent."""

    fwd: torch.Tensor  # (T-1, 2, H, W)
    consistent: torch.Tensor  # (T-1, H, W) bool, fb error < 1 px


def truth_flow(truth: torch.Tensor) -> TruthFlow:
    est = FlowEstimator("dis", "medium")
    fwds, cons = [], []
    for t in range(truth.shape[0] - 1):
        a, b = truth[t : t + 1], truth[t + 1 : t + 2]
        f, bw = est(a, b), est(b, a)
        fwds.append(f[0])
        cons.append(fb_error(f, bw)[0] < 1.0)
    return TruthFlow(torch.stack(fwds), torch.stack(cons))


def temporal_error(out: torch.Tensor, holes: torch.Tensor, gt: TruthFlow) -> tuple[float, float]:
    """(mean |out_t - warp(out_t+1)| in 8-bit levels, share of hole pixels where it was measured)."""
    total, count = 0.0, 0
    for t in range(out.shape[0] - 1):
        sel = (holes[t] > 0.5) & gt.consistent[t]
        if not bool(sel.any()):
            continue
        nxt = warp(out[t + 1].permute(2, 0, 1)[None], gt.fwd[t : t + 1])[0].permute(1, 2, 0)
        d = (out[t] - nxt).abs().mean(-1)
        total += float(d[sel].sum())
        count += int(sel.sum())
    hole_px = float((holes[:-1] > 0.5).sum())
    return (255.0 * total / count if count else float("nan")), (count / hole_px if hole_px else 0.0)


def telea_clip(inputs: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = torch.stack([telea_fill(inputs[t], holes[t]) for t in range(inputs.shape[0])])
    return out, time.perf_counter() - t0


def run_default(inputs, holes, config=None, flows=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    t0 = time.perf_counter()
    filled, unseen = propagate_fill(inputs, holes, config=config, flows=flows)
    return filled, unseen, time.perf_counter() - t0


def fmt(x: float, nd: int = 2, signed: bool = False) -> str:
    if x != x:  # nan
        return "n/a"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


# ----------------------------------------------------------------------------------------------
# Main benchmark
# ----------------------------------------------------------------------------------------------


def evaluate(case: Case, repeats: int = 1) -> dict:
    T, H, W = case.holes.shape
    print(f"\nCase {case.key}: {case.title}")
    for line in case.how:
        print(f"  {line}")
    hole_share = float(case.holes.mean())
    print(f"  hole: {100 * hole_share:.1f} % of the frame on average; input hole pixels set to grey")

    inputs = case.inputs
    # Timings: best of `repeats` runs (the machine may be shared); outputs are deterministic.
    default, unseen, t_def = run_default(inputs, case.holes)
    telea, t_tel = telea_clip(inputs, case.holes)
    for _ in range(repeats - 1):
        t_def = min(t_def, run_default(inputs, case.holes)[2])
        t_tel = min(t_tel, telea_clip(inputs, case.holes)[1])
    gt = truth_flow(case.truth)

    hole = case.holes > 0.5
    unseen_b = (unseen > 0.5) & hole
    seen_b = hole & ~unseen_b
    unseen_share = float(unseen_b.sum()) / max(float(hole.sum()), 1.0)
    res = {"case": case.key, "frames": T, "size": f"{W}x{H}", "hole": hole_share, "unseen": unseen_share}
    rows = []
    for name, out, secs in (("per-frame Telea", telea, t_tel), ("default (propagate_fill)", default, t_def)):
        p = psnr_in_mask(out, case.truth, case.holes)
        p_seen = psnr_in_mask(out, case.truth, seen_b.float()) if seen_b.any() else float("nan")
        p_unseen = psnr_in_mask(out, case.truth, unseen_b.float()) if unseen_b.any() else float("nan")
        twe, cover = temporal_error(out, case.holes, gt)
        key = "telea" if "Telea" in name else "default"
        res.update({f"psnr_{key}": p, f"twe_{key}": twe, f"spf_{key}": secs / T})
        rows.append([name, fmt(p), fmt(p_seen), fmt(p_unseen), fmt(twe), f"{secs / T:.3f}"])
    twe_truth, cover = temporal_error(case.truth, case.holes, gt)
    res["twe_truth"] = twe_truth
    rows.append(["ground truth (floor)", "", "", "", fmt(twe_truth), ""])
    print(
        text_table(
            ["method", "PSNR hole dB", "seen part", "unseen part", "temporal err (8-bit)", "s/frame"], rows
        )
    )
    d = res["psnr_default"] - res["psnr_telea"]
    print(
        f"  default - Telea: {d:+.2f} dB PSNR in the hole; temporal error default/Telea = "
        f"{res['twe_default'] / res['twe_telea']:.2f}x, default/truth = "
        f"{res['twe_default'] / twe_truth:.2f}x; time default/Telea = {t_def / t_tel:.1f}x"
    )
    print(
        f"  never seen: {100 * unseen_share:.1f} % of hole pixels (filled by Telea inside propagate_fill); "
        f"temporal error measured on {100 * cover:.0f} % of hole pixels (ground-truth flow consistent)"
    )
    mid = T // 2
    path = save_panel(
        OUT_DIR / f"removal_{case.key}.png",
        [show_hole(case.truth[mid], case.holes[mid]), telea[mid], default[mid], case.truth[mid]],
        [f"input, hole in red (frame {mid})", "per-frame Telea", "default (propagate_fill)", "truth"],
    )
    print(f"  side by side (input | Telea | default | truth): {path}")
    return res


def main_cases(root: Path, keys: str, n: int | None, repeats: int) -> None:
    cfg = PropagationConfig()
    print(f"default config: {cfg}")
    print(f"timings: best of {repeats} run(s) per method")
    results = [evaluate(CASES[k](root, n), repeats) for k in keys]
    headers = [
        "case", "frames", "size", "hole %", "never seen %", "PSNR Telea", "PSNR default", "delta dB",
        "TWE Telea", "TWE default", "TWE truth", "s/f Telea", "s/f default",
    ]  # fmt: skip
    rows = [
        [
            r["case"],
            r["frames"],
            r["size"],
            f"{100 * r['hole']:.1f}",
            f"{100 * r['unseen']:.1f}",
            fmt(r["psnr_telea"]),
            fmt(r["psnr_default"]),
            fmt(r["psnr_default"] - r["psnr_telea"], signed=True),
            fmt(r["twe_telea"]),
            fmt(r["twe_default"]),
            fmt(r["twe_truth"]),
            f"{r['spf_telea']:.3f}",
            f"{r['spf_default']:.3f}",
        ]  # fmt: skip
        for r in results
    ]
    print("\nSummary (PSNR in dB inside the hole; TWE = temporal warping error in 8-bit levels;")
    print("s/f = seconds per frame, best of the repeats)")
    print(text_table(headers, rows))
    print("\nMarkdown:\n")
    print(md_table(headers, rows))


# ----------------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------------

SWEEP = {"flow_mask_dilation": (8, 15, 24), "consistency": (1.0, 2.0, 4.0), "lookahead": (20, 40)}


def sweep(root: Path, n: int | None) -> None:
    base = PropagationConfig()
    configs = [
        dataclasses.replace(base, flow_mask_dilation=d, consistency=c, lookahead=la)
        for d, c, la in itertools.product(*SWEEP.values())
    ]
    if base not in configs:
        configs.append(base)
    print(f"default config: {base}")
    print(
        "grid: " + ", ".join(f"{k} in {v}" for k, v in SWEEP.items()) + "; other fields at their defaults.\n"
        "Flows (DIS medium, unfilled) are estimated once per case and passed as a FlowSet; propagate_fill\n"
        "fills them per config exactly as when it estimates them itself, so only propagation is re-run."
    )
    per_case = {}
    for key in "AB":
        case = CASES[key](root, n)
        print(f"\nCase {case.key}: {case.title}; {' '.join(case.how)}")
        inputs = case.inputs
        gt = truth_flow(case.truth)
        t0 = time.perf_counter()
        flows = compute_flows(inputs, FlowEstimator("dis", "medium"))
        print(f"  flows: {time.perf_counter() - t0:.1f} s for {inputs.shape[0] - 1} pairs")
        telea, _ = telea_clip(inputs, case.holes)
        stats = {"telea": (psnr_in_mask(telea, case.truth, case.holes), float("nan"),
                           temporal_error(telea, case.holes, gt)[0], float("nan"))}  # fmt: skip
        t0 = time.perf_counter()
        for i, cfg in enumerate(configs):
            filled, unseen, secs = run_default(inputs, case.holes, config=cfg, flows=flows)
            hole = case.holes > 0.5
            uns = float(((unseen > 0.5) & hole).sum()) / max(float(hole.sum()), 1.0)
            stats[i] = (
                psnr_in_mask(filled, case.truth, case.holes),
                uns,
                temporal_error(filled, case.holes, gt)[0],
                secs / inputs.shape[0],
            )
        print(f"  {len(configs)} configs propagated in {time.perf_counter() - t0:.0f} s")
        per_case[key] = stats
    d_idx = configs.index(base)
    headers = ["config (fmd/cons/look)"]
    for key in "AB":
        headers += [f"{key} PSNR", f"{key} d", f"{key} unseen%", f"{key} TWE"]
    headers += ["mean d dB", "s/frame"]
    rows = []
    keys = list(range(len(configs))) + ["telea"]
    for i in keys:
        if i == "telea":
            label = "per-frame Telea"
        else:
            c = configs[i]
            label = f"{c.flow_mask_dilation}/{c.consistency:g}/{c.lookahead}" + (" *" if i == d_idx else "")
        row, deltas, secs = [label], [], []
        for key in "AB":
            p, u, twe, s = per_case[key][i]
            d = p - per_case[key][d_idx][0]
            deltas.append(d)
            secs.append(s)
            row += [fmt(p), fmt(d, signed=True), "" if u != u else f"{100 * u:.1f}", fmt(twe)]
        spf = "" if secs[0] != secs[0] else f"{sum(secs) / 2:.3f}"
        row += [fmt(sum(deltas) / len(deltas), signed=True), spf]
        rows.append(row)
    order = sorted(range(len(configs)), key=lambda i: -sum(per_case[k][i][0] for k in "AB"))
    print("\nSweep (* = current default; d = PSNR minus the default's; TWE = temporal warping error, 8-bit;")
    print("s/frame = propagation only, flows precomputed, mean of A and B)")
    print(text_table(headers, rows))
    best = configs[order[0]]
    print(
        f"\nbest mean PSNR: flow_mask_dilation={best.flow_mask_dilation}, consistency={best.consistency:g}, "
        f"lookahead={best.lookahead} ({rows[order[0]][-2]} dB vs the default)"
    )
    print("\nMarkdown:\n")
    print(md_table(headers, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_FRAMES} frames of each case")
    ap.add_argument("--sweep", action="store_true", help="PropagationConfig grid on cases A and B")
    ap.add_argument("--cases", default="ABC", help="which cases to run (default ABC)")
    ap.add_argument("--repeats", type=int, default=0, help="timing runs per method (2; --quick: 1)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    args = ap.parse_args()
    root = require_data(TENNIS, CAR)
    set_threads(args.threads)
    n = QUICK_FRAMES if args.quick else None
    torch.set_grad_enabled(False)
    header("bench_removal" + (" --sweep" if args.sweep else "") + (" --quick" if args.quick else ""))
    t0 = time.perf_counter()
    if args.sweep:
        sweep(root, n)
    else:
        keys = "".join(k for k in args.cases.upper() if k in CASES)
        main_cases(root, keys, n, args.repeats or (1 if args.quick else 2))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
