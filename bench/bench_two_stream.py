"""Speed and memory of the two-stream video protocol (``pipelines/two_stream_video.py``).

For the ``tiny`` and ``ours`` configs on CPU (randomly initialised: speed and memory do not depend on the
weights), on the DAVIS tennis clip (432x240) read lazily from disk and played ping-pong to any length:

* frames/s of the whole protocol on a 70-frame clip (generate every 20th frame with 6 keyframes at
  +-{10, 20, 40}, propagate the rest), and the share of the time in the model's flow (DIS at 256x256,
  filling, error), the model, the in-between propagation's flow (DIS at full size) and the rest;
* peak memory growth (VmHWM during the run - RSS before it) for 70 vs 280 frames: it must stay flat,
  since chunks are processed one after the other and results go to a sink.

With a CUDA GPU, the same for ``ours_big`` at 432x240 and 854x480 (frames upscaled), with the GPU's peak
allocated memory. Every measurement runs in its own process.

python bench/bench_two_stream.py [--quick] [--threads N] [--configs tiny,ours]

Full run ~8-10 min on 2 CPU cores (ours on 280 frames dominates); --quick ~2 min.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from common import (
    DEFAULT_THREADS,
    TENNIS,
    THREADS_HELP,
    PingPong,
    Stopwatch,
    frame_files,
    header,
    mask_files,
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

import keyframe_propagation.pipelines.two_stream.video as tsv
from keyframe_propagation.pipelines.flow import FlowEstimator
from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator


class _Timed:
    """A flow estimator whose calls are timed."""

    def __init__(self, inner: FlowEstimator, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with self.watch:
            return self.inner(a, b)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def child(spec: dict) -> dict:
    """One run of the protocol: spec = {"config", "frames", "size": [h, w], "device"}."""
    torch.set_grad_enabled(False)
    root = require_data(TENNIS)
    files, mfiles = frame_files(root, TENNIS), mask_files(root, TENNIS)
    size = tuple(spec["size"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    watches = {k: Stopwatch() for k in ("model_flow", "model", "propagation_flow", "reading")}

    def load_frame(p: Path) -> torch.Tensor:
        with watches["reading"]:
            return read_frame(p, size)

    def load_mask(p: Path) -> torch.Tensor:
        with watches["reading"]:
            return read_mask(p, size)

    torch.manual_seed(0)
    model = TwoStreamGenerator(spec["config"]).eval().to(device)
    forward = model.forward

    def timed_forward(*a, **k):
        sync()
        with watches["model"]:
            out = forward(*a, **k)
            sync()
        return out

    model.forward = timed_forward  # type: ignore[method-assign]
    model_flows = tsv.model_flows

    def timed_flows(*a, **k):
        with watches["model_flow"]:
            return model_flows(*a, **k)

    tsv.model_flows = timed_flows  # patched in this child process only
    est = _Timed(FlowEstimator("dis", "medium"), watches["propagation_flow"])
    model_est = FlowEstimator("dis", "medium", work_size=(256, 256))
    count = [0]

    def sink(t: int, filled: torch.Tensor, unseen: torch.Tensor) -> None:
        count[0] += 1

    def run(n: int) -> tsv.TwoStreamVideo:
        video = tsv.TwoStreamVideo(
            model,
            PingPong(files, n, load_frame),
            PingPong(mfiles, n, load_mask),
            estimator=est,
            model_estimator=model_est,
        )
        video.run(sink=sink)
        return video

    # Warm-up: the allocator's arenas and oneDNN/cuDNN plans reach their steady state (RSS grows by
    # ~100 MiB over a run's first ~40 frames, then stays flat).
    run(int(spec.get("warmup", 21)))
    for sw in watches.values():
        sw.seconds, sw.calls = 0.0, 0
    count[0] = 0
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    hwm_ok = reset_hwm()
    base_rss = proc_status("VmRSS")
    t0 = time.perf_counter()
    video = run(int(spec["frames"]))
    wall = time.perf_counter() - t0
    hwm = proc_status("VmHWM") if hwm_ok else None
    return {
        **spec,
        "frames_done": count[0],
        "seconds": wall,
        "generated": len(video.generated),
        "max_cached": video.max_cached,
        "parts": {k: v.seconds for k, v in watches.items()},
        "hwm_growth": (hwm - base_rss) if (hwm is not None and base_rss is not None) else None,
        "base_rss": base_rss,
        "hwm": hwm,
        "gpu_peak": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    }


def _child_result(spec: dict, threads: int) -> dict:
    r = run_child(__file__, spec, threads)
    if r is None:
        raise RuntimeError(f"child {spec} failed")
    return r


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _speed_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        p, total = r["parts"], r["seconds"]
        other = total - p["model_flow"] - p["model"] - p["propagation_flow"]
        rows.append(
            [
                r["config"],
                f"{r['size'][1]}x{r['size'][0]}",
                r["device"],
                str(r["frames_done"]),
                _fmt(total, 1),
                _fmt(r["frames_done"] / total, 2),
                str(r["generated"]),
                _fmt(p["model"] / max(r["generated"], 1), 2),
                f"{100 * p['model_flow'] / total:.0f}%",
                f"{100 * p['model'] / total:.0f}%",
                f"{100 * p['propagation_flow'] / total:.0f}%",
                f"{100 * other / total:.0f}%",
            ]
        )
    return rows


SPEED_HEADS = ["config", "size", "device", "frames", "seconds", "frames/s", "generated", "model s/gen",
               "model flow", "model", "prop. flow", "other"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="tiny on 70/140 frames, ours on 41 frames (speed only)"
    )
    ap.add_argument("--configs", default="tiny,ours", help="CPU configs to measure")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.child:
        print_result(child(json.loads(args.child)))
        return
    require_data(TENNIS)
    header("bench_two_stream" + (" --quick" if args.quick else ""))
    t_start = time.perf_counter()
    # 70 frames = the whole tennis clip once; 280 = four ping-pong passes over the same content, so both
    # runs see the same masks (a shorter clip would miss the clip's larger masks and measure less).
    short, long = (70, 140) if args.quick else (70, 280)
    configs = [c for c in args.configs.split(",") if c]
    speed: list[dict] = []
    mem_rows: list[list[str]] = []
    for cfg in configs:
        if args.quick and cfg != "tiny":
            runs = [(41, 21)]  # frames, warm-up frames: speed only, 3 generated frames
        else:
            runs = [(short, short), (long, short)]  # warm-up: one full pass over the clip
        res = []
        for n, warmup in runs:
            spec = {"config": cfg, "frames": n, "warmup": warmup, "size": [240, 432], "device": "cpu"}
            res.append(_child_result(spec, args.threads))
            print(f"  {cfg} {n} frames: {res[-1]['seconds']:.1f} s", flush=True)
        speed.append(res[0])
        if len(res) == 2:
            a, b = res
            ratio = b["hwm_growth"] / a["hwm_growth"] if a["hwm_growth"] and b["hwm_growth"] else None
            mem_rows.append(
                [
                    cfg,
                    _fmt(a["hwm_growth"]),
                    _fmt(b["hwm_growth"]),
                    _fmt(ratio, 2),
                    _fmt(a["hwm"]),
                    _fmt(b["hwm"]),
                    str(b["max_cached"]),
                ]
            )

    print("\nSpeed on CPU, tennis clip 432x240 (random weights; every 20th frame generated, 6 keyframes):")
    print(text_table(SPEED_HEADS, _speed_rows(speed)))
    print(
        "  model flow = DIS at 256x256 target<->keyframe + filling + error; prop. flow = DIS at full "
        "size between consecutive frames; other = propagation steps, Telea, resizing, reading"
    )
    mem_heads = ["config", f"growth {short}", f"growth {long}", "ratio", f"peak RSS {short}",
                 f"peak RSS {long}", "generated frames held"]  # fmt: skip
    if mem_rows:
        print(f"\nMemory on CPU (MiB), {short} vs {long} frames; growth = VmHWM during the run - RSS before:")
        print(text_table(mem_heads, mem_rows))

    gpu = []
    if torch.cuda.is_available():
        for size in ([240, 432], [480, 854]):
            spec = {"config": "ours_big", "frames": short, "warmup": 21, "size": size, "device": "cuda"}
            gpu.append(_child_result(spec, args.threads))
        print(f"\nGPU ({torch.cuda.get_device_name(0)}), ours_big, {short} frames:")
        rows = _speed_rows(gpu)
        for row, r in zip(rows, gpu):
            row.append(_fmt(r["gpu_peak"]))
        print(text_table([*SPEED_HEADS, "GPU peak MiB"], rows))
    else:
        print("\nGPU: none available here; ours_big at 432x240 and 854x480 not measured.")

    print("\nMarkdown:\n")
    print(md_table(SPEED_HEADS, _speed_rows(speed + gpu)))
    if mem_rows:
        print()
        print(md_table(mem_heads, mem_rows))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
