"""Speed and memory of flow estimation and of the zero-download object removal, on real frames.

* FlowEstimate throughput: pairs/s of ``FlowEstimator("dis", preset)`` for ultrafast/fast/medium at
  432x240 (DAVIS tennis) and 1024x576 (running_car 972x540 upscaled, INTER_LINEAR), and of
  ``compute_flows`` (forward + backward + hole fill + forward-backward error) with DIS medium.
* Threads: ``propagate_fill`` on the 70 tennis frames with 1 thread (torch and OpenCV) and with all
  cores, on an idle machine and next to one busy process; all cores both as the command line runs them
  (OpenMP's idle threads sleep, ``OMP_WAIT_POLICY=PASSIVE``) and with OpenMP's default (idle threads
  spin), which is what made ``remove`` several times slower than one thread on a busy machine.
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
    python bench/bench_speed.py --threads-only   # only 1 thread vs all cores (about 2 minutes)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import (
    CAR,
    DEFAULT_THREADS,
    TENNIS,
    THREADS_HELP,
    PingPong,
    Stopwatch,
    frame_files,
    header,
    load_clip,
    load_mask_clip,
    mask_files,
    maxrss_mib,
    md_table,
    print_result,
    proc_status,
    read_frame,
    read_mask,
    require_data,
    reset_hwm,
    run_child,
    set_threads,
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


def _pairs_per_second(
    frames: torch.Tensor, masks: torch.Tensor, pairs: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` pairs/s of each estimator; the repeats go round-robin over the estimators,
    so a burst of load from other processes does not hit only one of them."""
    ests = {p: FlowEstimator("dis", p) for p in PRESETS}
    medium = FlowEstimator("dis", "medium")
    runs = {}
    for preset, est in ests.items():
        est(frames[:1], frames[1:2])  # warm-up

        def run(est: FlowEstimator = est) -> None:
            for t in range(pairs):
                est(frames[t : t + 1], frames[t + 1 : t + 2])

        runs[preset] = run
    runs["compute_flows"] = lambda: compute_flows(frames, medium, masks=masks)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return {k: pairs / v for k, v in best.items()}


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


def child(spec: dict) -> dict:
    """One propagate_fill measurement; spec = {"size": label, "frames": n, optional "cv_threads": n}."""
    import keyframe_propagation.pipelines.flow as flow_mod
    import keyframe_propagation.pipelines.propagate as prop

    torch.set_grad_enabled(False)
    if spec.get("cv_threads"):
        import cv2

        cv2.setNumThreads(int(spec["cv_threads"]))
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
    # fill_flow_in_mask is called by flow.complete_flow; fb_error and telea_fill by propagate itself.
    for mod, name in ((flow_mod, "fill_flow_in_mask"), (prop, "fb_error"), (prop, "telea_fill")):
        orig = getattr(mod, name)

        def wrapped(*a, _orig=orig, _sw=timers[name], **k):
            with _sw:
                return _orig(*a, **k)

        setattr(mod, name, wrapped)

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
    base_maxrss = maxrss_mib()
    hwm_ok = reset_hwm()
    base_rss = proc_status("VmRSS")
    t0 = time.perf_counter()
    c0 = time.process_time()
    prop.propagate_fill(frames, masks, sink=sink, estimator=est)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    hwm = proc_status("VmHWM") if hwm_ok else None
    return {
        "size": spec["size"],
        "frames": count[0],
        "seconds": wall,
        "cpu_seconds": cpu,
        "maxrss_growth": maxrss_mib() - base_maxrss,
        "hwm_growth": (hwm - base_rss) if (hwm is not None and base_rss is not None) else None,
        "base_rss": base_rss,
        "parts": {k: v.seconds for k, v in timers.items()} | {"reading": reading.seconds},
        "pairs_estimated": timers["estimate"].calls // 2,
    }


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def ratio_str(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def growth(r: dict) -> float | None:
    """The memory growth used for ratios: VmHWM-based where available, else the ru_maxrss delta."""
    return r["hwm_growth"] if r["hwm_growth"] is not None else r["maxrss_growth"]


def propagation_section(specs: list[dict], threads: int) -> list[dict]:
    print(
        "\nPropagation: propagate_fill, default config, DIS medium; tennis masks as holes; lazy ping-pong\n"
        "source (read on access, LRU of 4), results discarded; one fresh subprocess per row.\n"
        "peak growth = VmHWM during the call - RSS before it (high-water mark reset via\n"
        "/proc/self/clear_refs); ru_maxrss d = ru_maxrss after - before the call\n"
        "(baseline for both: after imports and a 2-frame warm-up). CPU s = process CPU time: close to the\n"
        "wall time on an idle machine, a check on the timings when other processes compete for the cores"
    )
    res = []
    for spec in specs:
        print(f"  running {spec['frames']} frames at {spec['size']} ...", flush=True)
        r = run_child(__file__, spec, threads)
        if r is not None:
            res.append(r)
    rows = [
        [
            r["size"],
            r["frames"],
            f"{r['seconds']:.1f}",
            f"{r['cpu_seconds']:.1f}",
            f"{r['frames'] / r['seconds']:.2f}",
            f"{100 * r['parts']['estimate'] / r['seconds']:.0f} %",
            mib(r["hwm_growth"]),
            mib(r["maxrss_growth"]),
            mib(r["base_rss"]),
        ]
        for r in res
    ]
    heads = ["size", "frames", "seconds", "CPU s", "frames/s", "flow est.", "peak growth MiB",
             "ru_maxrss d MiB", "RSS before MiB"]  # fmt: skip
    print(text_table(heads, rows))
    small = [r for r in res if r["size"] == "432x240"]
    if len(small) >= 2:
        r_s, r_l = small[0], small[-1]
        g_s, g_l = growth(r_s), growth(r_l)
        m_s, m_l = r_s["maxrss_growth"], r_l["maxrss_growth"]
        print(
            f"  memory {r_l['frames']} vs {r_s['frames']} frames: peak growth ratio "
            f"{ratio_str(g_l / g_s if g_s and g_l is not None else None)}, ru_maxrss delta ratio "
            f"{ratio_str(m_l / m_s if m_s > 0 else None)} (1.0 = does not grow with clip length); speed "
            f"{r_l['frames'] / r_l['seconds']:.2f} vs {r_s['frames'] / r_s['seconds']:.2f} frames/s"
        )
    for r in res:
        if r["size"] != "432x240":
            g_s = growth(small[0]) if small else None
            g = growth(r)
            if g_s and g is not None:
                print(f"  {r['size']} uses {g / g_s:.1f}x the memory of 432x240 for {r['frames']} frames")

    print("\nWhere propagate_fill spends its time (share of wall time; flow estimation = DIS calls)")
    names = [
        ("estimate", "flow estimation (DIS medium)"),
        ("fill_flow_in_mask", "flow fill in holes (IDW)"),
        ("fb_error", "forward-backward checks"),
        ("telea_fill", "Telea fallback (unseen px)"),
        ("reading", "frame/mask reading (lazy source)"),
    ]
    rows = [[label] + [f"{100 * r['parts'][key] / r['seconds']:.0f} %" for r in res] for key, label in names]
    rows.append(
        ["rest (chains, warps, blending)"]
        + [f"{100 * (1 - sum(r['parts'].values()) / r['seconds']):.0f} %" for r in res]
    )
    rows.append(["pairs estimated / frame"] + [f"{r['pairs_estimated'] / r['frames']:.2f}" for r in res])
    print(text_table(["part"] + [f"{r['size']} x{r['frames']}" for r in res], rows))
    return res


THREAD_CONFIGS = (
    # label, --threads, OMP_WAIT_POLICY (None = OpenMP's default)
    ("1 thread (--threads 1)", 1, None),
    ("all cores, idle threads sleep (the CLI's default)", 0, "PASSIVE"),
    ("all cores, OpenMP's default (idle threads spin)", 0, None),
)


def threads_section(frames: int) -> list[dict]:
    """1 thread vs all cores, idle and next to one busy process, side by side in this run."""
    print(
        f"\nThreads: propagate_fill on {frames} frames at 432x240 (DAVIS tennis), DIS medium, one fresh\n"
        "subprocess per cell; 'busy' = next to one process spinning on a core (started and stopped here).\n"
        f"This machine has {os.cpu_count()} cores. CPU s = process CPU time (spinning threads show here)."
    )
    base_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    results = {}
    for busy in (False, True):
        load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            if load is not None:
                time.sleep(1.0)
            for label, threads, policy in THREAD_CONFIGS:
                env = base_env | ({"OMP_WAIT_POLICY": policy} if policy else {})
                spec = {"size": "432x240", "frames": frames, "cv_threads": threads}
                print(f"  running {label}{', busy' if busy else ''} ...", flush=True)
                results[(label, busy)] = run_child(__file__, spec, threads, env=env)
        finally:
            if load is not None:
                load.kill()
                load.wait()
    one = {busy: results[(THREAD_CONFIGS[0][0], busy)] for busy in (False, True)}
    rows = []
    for label, _, _ in THREAD_CONFIGS:
        row = [label]
        for busy in (False, True):
            r = results[(label, busy)]
            if r is None:
                row += ["failed", "-", "-"]
                continue
            ref = one[busy]
            ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
            row += [f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", ratio]
        rows.append(row)
    heads = ["threads", "idle s", "idle CPU s", "idle x 1 thread", "busy s", "busy CPU s", "busy x 1 thread"]
    print(text_table(heads, rows))
    return [r for r in results.values() if r is not None]


def flow_section(root: Path, pairs: int, repeats: int) -> dict[str, dict[str, float]]:
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
    (h0, w0), (h1, w1) = SIZES["432x240"], SIZES["1024x576"]
    print(
        f"  1024x576 has {h1 * w1 / (h0 * w0):.1f}x the pixels of 432x240; DIS medium runs "
        f"{flow['432x240']['medium'] / flow['1024x576']['medium']:.1f}x slower there"
    )
    return flow


def markdown_summary(flow: dict[str, dict[str, float]], res: list[dict]) -> str:
    by = {(r["size"], r["frames"]): r for r in res}
    small = sorted(r["frames"] for r in res if r["size"] == "432x240")
    big_n = sorted(r["frames"] for r in res if r["size"] == "1024x576")

    def prop(size: str, n: int | None, what: str) -> str:
        r = by.get((size, n))
        if r is None:
            return "-"
        if what == "fps":
            return f"{r['frames'] / r['seconds']:.2f}"
        if what == "share":
            return f"{100 * r['parts']['estimate'] / r['seconds']:.0f} %"
        return mib(growth(r))

    md = [[f"DIS {p} (pairs/s)", f"{flow['432x240'][p]:.1f}", f"{flow['1024x576'][p]:.1f}"] for p in PRESETS]
    md.append(
        [
            "compute_flows, DIS medium (pairs/s)",
            f"{flow['432x240']['compute_flows']:.1f}",
            f"{flow['1024x576']['compute_flows']:.1f}",
        ]
    )
    for n in small:
        b = n if n in big_n else None
        md.append(
            [f"propagate_fill, {n} frames (frames/s)", prop("432x240", n, "fps"), prop("1024x576", b, "fps")]
        )
    if small:
        n, b = small[0], (small[0] if small[0] in big_n else None)
        md.append(["share of propagate_fill in flow estimation", prop("432x240", n, "share"),
                   prop("1024x576", b, "share")])  # fmt: skip
    for n in small:
        b = n if n in big_n else None
        md.append(
            [f"peak memory growth, {n} frames (MiB)", prop("432x240", n, "mem"), prop("1024x576", b, "mem")]
        )
    if len(small) >= 2:
        g_s, g_l = growth(by[("432x240", small[0])]), growth(by[("432x240", small[-1])])
        ratio = g_l / g_s if g_s and g_l is not None else None
        md.append([f"memory ratio {small[-1]}/{small[0]} frames", ratio_str(ratio), "-"])
    return md_table(["measurement", "432x240", "1024x576"], md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs/frames (about a minute)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    ap.add_argument("--threads-only", action="store_true", help="only the 1 thread vs all cores section")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.child:
        print_result(child(json.loads(args.child)))
        return
    root = require_data(TENNIS, CAR)
    torch.set_grad_enabled(False)
    header("bench_speed" + (" --quick" if args.quick else ""))
    t_start = time.perf_counter()
    pairs, repeats = (10, 2) if args.quick else (20, 3)
    short, long = (60, 120) if args.quick else (70, 280)
    if args.threads_only:
        threads_section(short)
        print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
        return
    specs = [{"size": "432x240", "frames": short}, {"size": "432x240", "frames": long}]
    if not args.quick:
        specs.append({"size": "1024x576", "frames": short})
    # Propagation first, while this process is still small: a child's ru_maxrss starts at the
    # parent's RSS at fork time (the kernel carries it over exec), which would hide its growth.
    res = propagation_section(specs, args.threads)
    threads_section(short)
    flow = flow_section(root, pairs, repeats)
    print("\nMarkdown:\n")
    print(markdown_summary(flow, res))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
