"""Peak memory of a real ComfyUI server against clip length: the IMAGE graph vs the streamed graph.

Builds a synthetic clip from shared footage (the running-car frames, ping-ponged to the longest
length and scaled to the size asked for, written once as an H.264 video, with the clip's static
square mask), then, for each graph and frame count, starts a fresh ComfyUI (CPU) with the pack,
queues the graph over HTTP and reads the server's peak RSS (``VmHWM``) when it has finished:

- ``image``: the short-clip graph (example workflow remove_object): Load Keyframes decodes the clip
  into an IMAGE batch, Flow Estimate, Two-Stream Inpaint, Save Image + Create Video + Save Video.
- ``stream``: the long-clip graph (example workflow remove_long_clip): core Load Video, Load
  Keyframes with stream on, Flow Estimate (settings only), Two-Stream Inpaint writing as it goes,
  core Save Video.
- ``model``: the streamed graph with a (tiny, random) two-stream model: the video protocol.
- ``refine``: Load Keyframes streaming -> Multiscale Refine on every frame (a tiny random LaMa, one
  plain pass per frame) writing as it goes.

DIS ultrafast keeps the runs short; the server runs torch on one thread (OMP_NUM_THREADS=1 unless set),
which changes the time, not the memory. Prints one table (peak RSS, above the idle server, ratio to the
shortest clip, and the highest RSS in each quarter of the run) and writes
bench/out/graph_memory_<W>x<H>.json (after every run, with each run's RSS timeline).

    python bench/bench_graph_memory.py --frames 100,300,1000 --size 1080p --graphs image,stream
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import CAR, OUT_DIR, header, md_table, require_data, text_table  # noqa: E402

SIZES = {"1080p": (1080, 1920), "4k": (2160, 3840), "540p": (540, 960), "270p": (270, 480)}
REPO = Path(__file__).resolve().parents[1]


def _size(text: str) -> tuple[int, int]:
    if text.lower() in SIZES:
        return SIZES[text.lower()]
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def build_base(base: Path, frames: int, size: tuple[int, int]) -> None:
    """input/bench_clip.mp4 (+ bench_mask.png), tiny models, the pack linked into custom_nodes."""
    import cv2
    from comfy_fixtures import new_base

    from keyframe_propagation.pipelines.clip import VideoEncoder, list_images, read_mask_file
    from keyframe_propagation.pipelines.testing.lama import random_lama
    from keyframe_propagation.pipelines.two_stream.io import save_two_stream
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

    new_base(base)
    root = require_data(CAR)
    files = list_images(root / CAR / "frames")
    order = list(range(len(files))) + list(range(len(files) - 2, 0, -1))  # ping-pong
    h, w = size
    inp = base / "input"
    inp.mkdir(parents=True, exist_ok=True)
    enc = VideoEncoder(inp / "bench_clip.mp4", 24.0, (h, w))
    cache: dict[int, torch.Tensor] = {}
    for t in range(frames):
        k = order[t % len(order)]
        if k not in cache:
            img = cv2.imread(str(files[k]))[:, :, ::-1]
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
            cache = {k: torch.from_numpy(np.ascontiguousarray(img)).float() / 255}
        enc.add(cache[k])
    enc.close()
    mask = read_mask_file(root / CAR / "mask_square_972x540.png").astype(np.uint8) * 255
    cv2.imwrite(str(inp / "bench_mask.png"), cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))
    (base / "models" / "two_stream").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_two_stream(TwoStreamGenerator("tiny").eval(), base / "models" / "two_stream" / "tiny.safetensors")
    (base / "models" / "inpaint").mkdir(parents=True, exist_ok=True)
    from keyframe_propagation.pipelines.refine.lama import LamaConfig

    lama = random_lama(LamaConfig(ngf=8, n_blocks=2), seed=1)
    from safetensors.torch import save_file

    save_file(lama.state_dict(), str(base / "models" / "inpaint" / "tiny.safetensors"))


def prompt(graph: str, frames: int, tag: str) -> dict:
    """The API prompt of a graph on the first ``frames`` frames of the bench clip."""
    if graph == "image":
        api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
        api["1"]["inputs"].update(
            {"frames": "bench_clip.mp4", "masks": "bench_mask.png", "frame_cap": frames}
        )
        api["2"]["inputs"]["preset"] = "ultrafast"
        for node in api.values():
            if "filename_prefix" in node["inputs"]:
                node["inputs"]["filename_prefix"] = f"bench/{tag}"
        return api
    api = json.loads((REPO / "example_workflows" / "api" / "remove_long_clip_api.json").read_text())
    api["1"]["inputs"]["file"] = "bench_clip.mp4"
    api["2"]["inputs"].update({"masks": "bench_mask.png", "frame_cap": frames})
    api["3"]["inputs"]["preset"] = "ultrafast"
    api["4"]["inputs"]["output_folder"] = f"bench/{tag}"
    api["5"]["inputs"]["filename_prefix"] = f"bench/{tag}_video"
    if graph == "model":
        api["10"] = {
            "class_type": "KFP_TwoStreamModelLoader",
            "inputs": {"model_name": "tiny.safetensors", "dtype": "fp32"},
        }
        api["4"]["inputs"].update({"model": ["10", 0], "work_long_side": 512})
    if graph == "refine":
        api = {k: v for k, v in api.items() if k in ("1", "2")}
        api["10"] = {
            "class_type": "KFP_InpaintModelLoader",
            "inputs": {"model_name": "tiny.safetensors", "dtype": "fp32"},
        }
        api["11"] = {
            "class_type": "KFP_MultiscaleRefine",
            "inputs": {
                "model": ["10", 0], "clip": ["2", 3], "output_folder": f"bench/{tag}", "n_iters": 0,
                "lr": 0.002, "min_side": 512, "max_scales": 3, "px_budget": 1_800_000, "crop": False,
                "crop_margin": 128, "early_stop": False, "patience": 2, "min_improvement": 0.005,
                "checkpointing": False, "precision": "fp32", "output_size": "input",
            },
        }  # fmt: skip
        save = {"video": ["11", 2], "filename_prefix": f"bench/{tag}_v", "format": "mp4", "codec": "h264"}
        api["12"] = {"class_type": "SaveVideo", "inputs": save}
    return api


def vm(pid: int, field: str) -> float:
    """A /proc/<pid>/status field in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class _Peak:
    """Samples a process's resident memory every 0.2 s (its peak survives the process being killed),
    and keeps a timeline of it (one sample a second) to tell a window filling up from steady growth."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.peak, self._stop = pid, 0.0, False
        self.timeline: list[tuple[float, float]] = []  # (seconds since the start, RSS GiB)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop:
            try:
                self.peak = max(self.peak, vm(self.pid, "VmHWM"))
                now = time.monotonic() - t0
                if not self.timeline or now - self.timeline[-1][0] >= 1.0:
                    self.timeline.append((round(now, 1), round(vm(self.pid, "VmRSS"), 3)))
            except OSError:  # the process is gone
                return
            time.sleep(0.2)

    def quarters(self) -> list[float]:
        """The highest RSS (GiB) in each quarter of the run: flat when memory does not grow."""
        if not self.timeline:
            return []
        end = self.timeline[-1][0] or 1.0
        return [
            max((r for t, r in self.timeline if q * end / 4 <= t <= (q + 1) * end / 4), default=float("nan"))
            for q in range(4)
        ]

    def stop(self) -> float:
        self._stop = True
        self._thread.join(timeout=2)
        return self.peak


def measure(base: Path, graph: str, frames: int, timeout: float) -> dict:
    from comfy_fixtures import Server

    from keyframe_propagation.cli.comfy_client import ComfyClient

    srv = Server(base)
    srv.start()
    try:
        time.sleep(2)
        idle = vm(srv.proc.pid, "VmRSS")
        peak = _Peak(srv.proc.pid)
        client = ComfyClient(srv.url)
        t0 = time.monotonic()
        try:
            client.wait(client.queue(prompt(graph, frames, f"{graph}_{frames}")), timeout=timeout)
            status = "ok"
        except Exception as e:  # a worded refusal, or the server killed (out of memory)
            status = "server died" if srv.proc.poll() is not None else str(e).split("\n")[0][:200]
        wall = time.monotonic() - t0
        high = peak.stop()
    finally:
        srv.stop()
    return {"graph": graph, "frames": frames, "status": status, "idle_gib": idle, "peak_gib": high,
            "above_idle_gib": high - idle, "wall_s": wall, "quarters_gib": peak.quarters(),
            "timeline": peak.timeline}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default="100,300,1000", help="frame counts, comma-separated")
    p.add_argument("--size", default="1080p", help="1080p, 4k, 540p, 270p or WxH")
    p.add_argument("--graphs", default="image,stream", help="image, stream, model, refine")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per run")
    args = p.parse_args()
    counts = sorted(int(v) for v in args.frames.split(","))
    graphs = [g.strip() for g in args.graphs.split(",")]
    size = _size(args.size)
    os.environ.setdefault("COMFYUI_PATH", str(Path.home() / "comfy" / "ComfyUI"))
    # One thread in the server: memory does not depend on it, and runs on shared cores stay steady.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    header(f"ComfyUI peak RSS against clip length, {size[1]}x{size[0]}, DIS ultrafast")
    rows, results = [], []
    out = OUT_DIR / f"graph_memory_{size[1]}x{size[0]}.json"
    with tempfile.TemporaryDirectory(prefix="kfp_graph_mem_") as tmp:
        base = Path(tmp)
        t0 = time.monotonic()
        build_base(base, max(counts), size)
        print(f"built a {max(counts)}-frame {size[1]}x{size[0]} clip in {time.monotonic() - t0:.0f} s")
        for graph in graphs:
            first = None
            for n in counts:
                r = measure(base, graph, n, args.timeout)
                results.append(r)
                first = first if first is not None else (r["peak_gib"] if r["status"] == "ok" else None)
                ratio = f"{r['peak_gib'] / first:.2f}" if first and r["status"] == "ok" else "-"
                gib = [f"{r[k]:.2f}" for k in ("idle_gib", "peak_gib", "above_idle_gib")]
                quarters = "/".join(f"{q:.2f}" for q in r["quarters_gib"])
                rows.append([graph, n, r["status"], f"{r['wall_s']:.0f}", *gib, ratio, quarters])
                print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
                OUT_DIR.mkdir(exist_ok=True)  # after every run: a long bench keeps what it measured
                out.write_text(json.dumps({"size": size, "results": results}, indent=1))
    heads = ["graph", "frames", "status", "wall s", "idle GiB", "peak GiB", "above idle GiB", "peak / first",
             "RSS by quarter GiB"]  # fmt: skip
    print()
    print(text_table(heads, rows))
    print()
    print(md_table(heads, rows))


if __name__ == "__main__":
    main()
