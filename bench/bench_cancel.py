"""How long Cancel takes in a real ComfyUI: the streamed removal graph on a 4K clip, interrupted over
HTTP at random moments while it runs.

Builds the bench clip of ``bench_graph_memory`` (running-car frames scaled to the size asked for,
an H.264 video with a static square mask), starts a fresh ComfyUI (CPU) with the pack and queues the
long-clip graph (example workflow remove_long_clip, DIS at the preset asked for, medium by default:
its 4K estimate is the longest single step). Each round queues the prompt, waits a random time
(``--wait``, 2-20 s by default, so the interrupt lands anywhere: opening the video, reading frames,
estimating and completing flows, propagating, writing) and POSTs ``/interrupt``; the latency is from
that request to the ``execution_interrupted`` message (ComfyUI's own timestamp, same clock). The next
round queues the same prompt again, which resumes after the last complete chunk. Prints each latency
and their median and maximum.

    python bench/bench_cancel.py --size 4k --frames 30 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_graph_memory import _size, build_base, prompt  # noqa: E402
from common import header  # noqa: E402


def _done(folder: Path) -> int:
    try:
        return int(json.loads((folder / ".kfp_progress.json").read_text())["done"])
    except (OSError, ValueError, KeyError):
        return -1


def _history(url: str, pid: str) -> dict | None:
    with urllib.request.urlopen(f"{url}/history/{pid}", timeout=10) as r:
        return json.loads(r.read()).get(pid)


def one_round(
    srv, api: dict, folder: Path, rng: random.Random, wait: tuple[float, float], timeout: float
) -> dict:
    from keyframe_propagation.cli.comfy_client import ComfyClient

    client = ComfyClient(srv.url)
    pid = client.queue(api)
    t0 = time.monotonic()
    delay = rng.uniform(*wait)
    while time.monotonic() - t0 < delay:
        if _history(srv.url, pid):
            return {"status": "finished before the interrupt", "done": _done(folder)}
        time.sleep(0.05)
    sent = time.time() * 1000
    req = urllib.request.Request(f"{srv.url}/interrupt", data=b"{}", method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    while time.monotonic() - t0 < timeout:
        entry = _history(srv.url, pid)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.02)
    else:
        return {"status": "timed out", "done": _done(folder)}
    messages = dict((k, v) for k, v in entry["status"]["messages"])
    if "execution_interrupted" not in messages:
        return {"status": entry["status"].get("status_str", "?"), "done": _done(folder)}
    latency = (messages["execution_interrupted"]["timestamp"] - sent) / 1000
    return {"status": "interrupted", "latency_s": latency, "done": _done(folder)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4k", help="1080p, 4k, 540p, 270p or WxH")
    p.add_argument("--frames", type=int, default=30, help="frames of the clip")
    p.add_argument("--rounds", type=int, default=10, help="interrupts")
    p.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"], help="DIS preset")
    p.add_argument("--wait", default="2,20", help="seconds from queueing to the interrupt: min,max")
    p.add_argument("--chunk", type=int, default=0, help="the node's chunk (0: the workflow's)")
    p.add_argument("--lookahead", type=int, default=-1, help="the node's lookahead (-1: the workflow's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per round")
    args = p.parse_args()
    size = _size(args.size)
    os.environ.setdefault("COMFYUI_PATH", str(Path.home() / "comfy" / "ComfyUI"))
    from comfy_fixtures import Server

    header(f"Cancel in ComfyUI, {size[1]}x{size[0]}, streamed removal, DIS {args.preset}")
    if args.chunk > 0 or args.lookahead >= 0:
        look = args.lookahead if args.lookahead >= 0 else "as the workflow"
        print(f"chunk {args.chunk or 'as the workflow'}, lookahead {look}")
    rng = random.Random(args.seed)
    wait = tuple(float(v) for v in args.wait.split(","))
    with tempfile.TemporaryDirectory(prefix="kfp_cancel_") as tmp:
        base = Path(tmp)
        t0 = time.monotonic()
        build_base(base, args.frames, size)
        print(f"built a {args.frames}-frame clip in {time.monotonic() - t0:.0f} s")
        api = prompt("stream", args.frames, "cancel")
        api["3"]["inputs"]["preset"] = args.preset
        if args.chunk > 0:  # short chunks: frames are written soon, so interrupts land there too
            api["4"]["inputs"]["chunk"] = args.chunk
        if args.lookahead >= 0:
            api["4"]["inputs"]["lookahead"] = args.lookahead
        folder = base / "output" / "bench" / "cancel"
        srv = Server(base)
        srv.start()
        latencies = []
        try:
            for k in range(args.rounds):
                r = one_round(srv, api, folder, rng, wait, args.timeout)
                lat = f"{r['latency_s']:.2f} s" if "latency_s" in r else "-"
                print(f"  round {k + 1}: {r['status']}, {lat}, frames written {r['done']}", flush=True)
                if "latency_s" in r:
                    latencies.append(r["latency_s"])
                if r["status"] != "interrupted" and r["status"] != "timed out":
                    break
        finally:
            srv.stop()
    if latencies:
        latencies.sort()
        median = latencies[len(latencies) // 2]
        n = len(latencies)
        print(f"Cancel latency over {n} interrupts: median {median:.2f} s, max {latencies[-1]:.2f} s")


if __name__ == "__main__":
    main()
