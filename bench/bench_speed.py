"""Speed and memory of flow estimation and of the zero-download object removal, on real frames.

* FlowEstimate throughput: pairs/s of ``FlowEstimator("dis", preset)`` for ultrafast/fast/medium at
  432x240 (DAVIS tennis) and 1024x576 (running_car 972x540 upscaled, INTER_LINEAR), and of
  ``compute_flows`` (forward + backward + hole fill + forward-backward error) with DIS medium.
* Propagation: frames/s of ``propagate_fill`` (default config) and the share of its time spent in flow
  estimation, flow filling, consistency checks, the Telea fallback and frame reading; peak memory for a
  70- and a 280-frame clip at 432x240. Frames and masks come from a lazy ping-pong source (tennis played
  forward and backward, read from disk on access, small LRU) and the sink discards the results, so input
  and output do not count. Each propagation runs in a fresh subprocess: baseline after imports and a
  2-frame warm-up, then the peak RSS growth during the call (``ru_maxrss`` delta, and VmHWM - VmRSS
  with the high-water mark reset where /proc allows).

Usage (from the repository root)::

    python bench/bench_speed.py            # about 3 minutes on 2 CPU cores
    python bench/bench_speed.py --quick    # smaller counts, no 1024x576 propagation
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import (
    CAR,
    TENNIS,
    PingPong,
    Stopwatch,
    frame_files,
    header,
    load_clip,
    load_mask_clip,
    mask_files,
    md_table,
    read_frame,
    read_mask,
    require_data,
    text_table,
)

from keyframe_propagation.pipelines.flow import FlowEstimator, compute_flows

SIZES = {"432x240": (240, 432), "1024x576": (576, 1024)}
PRESETS = ("ultrafast", "fast", "medium")


def size_source(root: Path, label: str) -> tuple[list[Path], list[Path], tuple[int, int] | None]:
    """Frame files, mask files and the resize target (None = native) of a benchmark size."""
    if label == "432x240":
        return frame_files(root, TENNIS), mask_files(root, TENNIS), None
    return frame_files(root, CAR), mask_files(root, TENNIS), SIZES[label]


# ----------------------------------------------------------------------------------------------
# Flow throughput
# ----------------------------------------------------------------------------------------------


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pairs_per_second(
    frames: torch.Tensor, masks: torch.Tensor, pairs: int, repeats: int
) -> dict[str, float]:
    r: dict[str, float] = {}
    for preset in PRESETS:
        est = FlowEstimator("dis", preset)
        est(frames[:1], frames[1:2])  # warm-up

        def run(est: FlowEstimator = est) -> None:
            for t in range(pairs):
                est(frames[t : t + 1], frames[t + 1 : t + 2])

        r[preset] = pairs / best_time(run, repeats)
    est = FlowEstimator("dis", "medium")
    r["compute_flows"] = pairs / best_time(lambda: compute_flows(frames, est, masks=masks), repeats)
    return r


def flow_throughput(root: Path, pairs: int, repeats: int) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {}
    for label, size in SIZES.items():
        files, mfiles, resize = size_source(root, label)
        frames = load_clip(files[: pairs + 1], resize)
        masks = load_mask_clip(mfiles[: pairs + 1], size)
        assert tuple(frames.shape[1:3]) == size, frames.shape
        res[label] = _pairs_per_second(frames, masks, pairs, repeats)
    return res


# ----------------------------------------------------------------------------------------------
# Propagation, in a fresh subprocess per measurement
# ----------------------------------------------------------------------------------------------


def _proc_status(field: str) -> float | None:
    """A ``VmXXX`` field of /proc/self/status in MiB, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the peak-RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def child(spec: dict) -> dict:
    """One propagate_fill measurement; spec = {"size": label, "frames": n}."""
    import keyframe_propagation.pipelines.propagate as prop

    torch.set_grad_enabled(False)
    root = require_data(TENNIS, CAR)
    files, mfiles, resize = size_source(root, spec["size"])
    size = SIZES[spec["size"]]
    reading = Stopwatch()

    def load_frame(p: Path) -> torch.Tensor:
        with reading:
            return read_frame(p, resize)

    def load_mask(p: Path) -> torch.Tensor:
        with reading:
            return read_mask(p, size)

    # Timers around the parts of the pipeline (patched in this child process only).
    timers = {k: Stopwatch() for k in ("estimate", "fill_flow_in_mask", "fb_error", "telea_fill")}
    for name in ("fill_flow_in_mask", "fb_error", "telea_fill"):
        orig = getattr(prop, name, None)
        if orig is None:
            continue

        def wrapped(*a, _orig=orig, _sw=timers[name], **k):
            with _sw:
                return _orig(*a, **k)

        setattr(prop, name, wrapped)

    class TimedEstimator:
        def __init__(self, inner: FlowEstimator) -> None:
            self.inner = inner

        def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            with timers["estimate"]:
                return self.inner(a, b)

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    est = TimedEstimator(FlowEstimator("dis", "medium"))
    count = [0]

    def sink(t: int, filled: torch.Tensor, unseen: torch.Tensor) -> None:
        count[0] += 1

    def clip(n: int) -> tuple[PingPong, PingPong]:
        return PingPong(files, n, load_frame), PingPong(mfiles, n, load_mask)

    prop.propagate_fill(*clip(2), sink=sink, estimator=est)  # warm-up
    for sw in [*timers.values(), reading]:
        sw.seconds, sw.calls = 0.0, 0
    count[0] = 0
    frames, masks = clip(int(spec["frames"]))
    gc.collect()
    base_maxrss = _maxrss_mib()
    hwm_ok = _reset_hwm()
    base_rss = _proc_status("VmRSS")
    t0 = time.perf_counter()
    c0 = time.process_time()
    prop.propagate_fill(frames, masks, sink=sink, estimator=est)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    hwm = _proc_status("VmHWM") if hwm_ok else None
    return {
        "size": spec["size"],
        "frames": count[0],
        "seconds": wall,
        "cpu_seconds": cpu,
        "maxrss_growth": _maxrss_mib() - base_maxrss,
        "hwm_growth": (hwm - base_rss) if (hwm is not None and base_rss is not None) else None,
        "base_rss": base_rss,
        "parts": {k: v.seconds for k, v in timers.items()} | {"reading": reading.seconds},
        "pairs_estimated": timers["estimate"].calls // 2,
    }


def run_child(spec: dict) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"  measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return None


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs/frames (about a minute)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return
    root = require_data(TENNIS, CAR)
    torch.set_grad_enabled(False)
    header("bench_speed" + (" --quick" if args.quick else ""))
    t_start = time.perf_counter()
    pairs, repeats = (6, 1) if args.quick else (20, 3)
    short, long = (60, 120) if args.quick else (70, 280)

    print(
        f"\nFlow estimation: pairs/s, best of {repeats} run(s) of {pairs} consecutive pairs, "
        "one pair per call"
    )
    print("(432x240: davis_tennis frames; 1024x576: running_car 972x540 upscaled with INTER_LINEAR)")
    flow = flow_throughput(root, pairs, repeats)
    rows = []
    for key in (*PRESETS, "compute_flows"):
        name = f"DIS {key}" if key in PRESETS else "compute_flows, DIS medium (fwd+bwd+fill+fb error)"
        row = [name]
        for label in SIZES:
            row += [f"{flow[label][key]:.1f}", f"{1000 / flow[label][key]:.1f}"]
        rows.append(row)
    heads = ["estimator"] + [f"{lab} {u}" for lab in SIZES for u in ("pairs/s", "ms/pair")]
    print(text_table(heads, rows))
    for label in SIZES:
        f = flow[label]
        print(
            f"  {label}: medium is {f['ultrafast'] / f['medium']:.1f}x slower than ultrafast; "
            f"a compute_flows pair costs {f['medium'] / f['compute_flows']:.1f}x one medium estimate"
        )
    px = (SIZES["1024x576"][0] * SIZES["1024x576"][1]) / (SIZES["432x240"][0] * SIZES["432x240"][1])
    print(
        f"  1024x576 has {px:.1f}x the pixels of 432x240; DIS medium runs "
        f"{flow['432x240']['medium'] / flow['1024x576']['medium']:.1f}x slower there"
    )

    specs = [{"size": "432x240", "frames": short}, {"size": "432x240", "frames": long}]
    if not args.quick:
        specs.append({"size": "1024x576", "frames": short})
    print(
        "\nPropagation: propagate_fill, default config, DIS medium; tennis masks as holes; lazy ping-pong "
        "source,\nresults discarded; one fresh subprocess per row (memory = growth during the call over "
        "the RSS after a\n2-frame warm-up)"
    )
    res = []
    for spec in specs:
        print(f"  running {spec['frames']} frames at {spec['size']} ...", flush=True)
        r = run_child(spec)
        if r is not None:
            res.append(r)
    rows = []
    for r in res:
        parts, secs = r["parts"], r["seconds"]
        rows.append(
            [
                r["size"],
                r["frames"],
                f"{secs:.1f}",
                f"{r['frames'] / secs:.2f}",
                f"{100 * parts['estimate'] / secs:.0f} %",
                mib(r["hwm_growth"]),
                mib(r["maxrss_growth"]),
                mib(r["base_rss"]),
            ]
        )
    print(
        text_table(
            [
                "size",
                "frames",
                "seconds",
                "frames/s",
                "flow est.",
                "peak growth MiB",
                "ru_maxrss d MiB",
                "RSS before MiB",
            ],
            rows,
        )  # fmt: skip
    )
    by = {(r["size"], r["frames"]): r for r in res}
    r_s, r_l = by.get(("432x240", short)), by.get(("432x240", long))
    ratio_hwm = ratio_max = None
    if r_s and r_l:
        if r_s["hwm_growth"] and r_l["hwm_growth"] is not None:
            ratio_hwm = r_l["hwm_growth"] / r_s["hwm_growth"]
        if r_s["maxrss_growth"] > 0:
            ratio_max = r_l["maxrss_growth"] / r_s["maxrss_growth"]
        print(
            f"  memory {long} vs {short} frames: peak growth ratio "
            f"{'n/a' if ratio_hwm is None else f'{ratio_hwm:.2f}'}, ru_maxrss delta ratio "
            f"{'n/a' if ratio_max is None else f'{ratio_max:.2f}'} (1.0 = does not grow with clip length); "
            f"speed {r_l['frames'] / r_l['seconds']:.2f} vs {r_s['frames'] / r_s['seconds']:.2f} frames/s"
        )

    print("\nWhere propagate_fill spends its time (share of wall time; flow estimation = DIS calls)")
    names = [
        ("estimate", "flow estimation (DIS medium)"),
        ("fill_flow_in_mask", "flow fill in holes (IDW)"),
        ("fb_error", "forward-backward checks"),
        ("telea_fill", "Telea fallback (unseen px)"),
        ("reading", "frame/mask reading (lazy source)"),
    ]
    heads = ["part"] + [f"{r['size']} x{r['frames']}" for r in res]
    rows = []
    for key, label in names:
        rows.append([label] + [f"{100 * r['parts'][key] / r['seconds']:.0f} %" for r in res])
    rows.append(
        ["rest (chains, warps, blending)"]
        + [f"{100 * (1 - sum(r['parts'].values()) / r['seconds']):.0f} %" for r in res]
    )
    rows.append(["pairs estimated / frame"] + [f"{r['pairs_estimated'] / r['frames']:.2f}" for r in res])
    print(text_table(heads, rows))

    # Markdown summary.
    def cell(label: str, key: str) -> str:
        return f"{flow[label][key]:.1f}"

    def prop_cell(size: str, frames: int, what: str) -> str:
        r = by.get((size, frames))
        if r is None:
            return "-"
        if what == "fps":
            return f"{r['frames'] / r['seconds']:.2f}"
        if what == "share":
            return f"{100 * r['parts']['estimate'] / r['seconds']:.0f} %"
        return mib(r["hwm_growth"] if r["hwm_growth"] is not None else r["maxrss_growth"])

    md = [[f"DIS {p} (pairs/s)", cell("432x240", p), cell("1024x576", p)] for p in PRESETS]
    md.append(
        [
            "compute_flows, DIS medium (pairs/s)",
            cell("432x240", "compute_flows"),
            cell("1024x576", "compute_flows"),
        ]
    )
    big = "1024x576"
    md.append([f"propagate_fill, {short} frames (frames/s)", prop_cell("432x240", short, "fps"),
               prop_cell(big, short, "fps")])  # fmt: skip
    md.append([f"propagate_fill, {long} frames (frames/s)", prop_cell("432x240", long, "fps"), "-"])
    md.append(["share of propagate_fill in flow estimation", prop_cell("432x240", short, "share"),
               prop_cell(big, short, "share")])  # fmt: skip
    md.append([f"peak memory growth, {short} frames (MiB)", prop_cell("432x240", short, "mem"),
               prop_cell(big, short, "mem")])  # fmt: skip
    md.append([f"peak memory growth, {long} frames (MiB)", prop_cell("432x240", long, "mem"), "-"])
    ratio = ratio_hwm if ratio_hwm is not None else ratio_max
    md.append([f"memory ratio {long}/{short} frames", "n/a" if ratio is None else f"{ratio:.2f}", "-"])
    print("\nMarkdown:\n")
    print(md_table(["measurement", "432x240", "1024x576"], md))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
