"""Integration: the long-clip example workflow in a real ComfyUI over HTTP (core Load Video -> Load
Keyframes streaming -> Two-Stream Inpaint writing as it goes -> core Save Video); Cancel in the
middle, then the same prompt again continues and ends as an uninterrupted run."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from comfy_fixtures import TENNIS
from conftest import COMFYUI_PATH, REPO, comfyui_available
from PIL import Image

from keyframe_propagation.cli.comfy_client import ComfyClient, ui_to_api
from keyframe_propagation.pipelines.errors import PipelineError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
    pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}"),
]


def _api(folder: str, chunk: int = 10, **load) -> dict:
    api = json.loads((REPO / "example_workflows" / "api" / "remove_long_clip_api.json").read_text())
    api["2"]["inputs"].update(load)
    api["3"]["inputs"]["preset"] = "ultrafast"
    api["4"]["inputs"].update({"output_folder": folder, "chunk": chunk, "lookahead": 8})
    api["5"]["inputs"]["filename_prefix"] = f"video/{folder.replace('/', '_')}"
    return api


def _frames(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_the_template_is_its_api_copy(comfy_server):
    info = comfy_server.get("/object_info")
    ui = json.loads((REPO / "example_workflows" / "remove_long_clip.json").read_text())
    api = json.loads((REPO / "example_workflows" / "api" / "remove_long_clip_api.json").read_text())
    assert ui_to_api(ui, info) == api
    assert api["1"]["class_type"] == "LoadVideo" and api["5"]["class_type"] == "SaveVideo"
    assert api["2"]["inputs"]["stream"] is True and api["4"]["inputs"]["clip"] == ["2", 3]
    assert api["4"]["inputs"]["flow"] == ["3", 0] and api["3"]["inputs"]["clip"] == ["2", 3]


def test_streamed_removal_writes_complete_named_outputs(comfy_server):
    client = ComfyClient(comfy_server.url)
    entry = client.wait(client.queue(_api("kfp_long/short", frame_cap=12)), timeout=300)
    assert entry["status"]["status_str"] == "success"
    folder = comfy_server.base / "output" / "kfp_long" / "short"
    assert _frames(folder) == [f"{t:05d}.png" for t in range(12)]  # named as the video's frames
    record = json.loads((folder / ".kfp_progress.json").read_text())
    assert record["complete"] is True and record["done"] == 12
    with av.open(str(folder / "short.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p" and s.frames == 12
    # The node shows the video; core Save Video saved its copy of the VIDEO output.
    assert entry["outputs"]["4"]["images"][0]["filename"] == "short.mp4"
    saved = entry["outputs"]["5"]["images"][0]
    copy = comfy_server.base / "output" / saved["subfolder"] / saved["filename"]
    with av.open(str(copy)) as c:
        assert c.streams.video[0].frames == 12
    # Known pixels are the video's own (the MP4 input is lossy; the PNGs keep what was decoded).
    src = np.asarray(Image.open(TENNIS / "masks" / "00005.png").convert("L")) == 0
    out = np.asarray(Image.open(folder / "00005.png")).astype(int)
    with av.open(str(comfy_server.base / "input" / "long_clip.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(video=0))][5].astype(int)
    assert np.abs(out - decoded)[src].max() <= 1


def _interrupt_when(folder: Path, frames: int, timeout: float, url: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if json.loads((folder / ".kfp_progress.json").read_text())["done"] >= frames:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    req = urllib.request.Request(f"{url}/interrupt", data=b"{}", method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def test_cancel_then_queue_again_continues_and_equals_an_uninterrupted_run(comfy_server):
    client = ComfyClient(comfy_server.url)
    out = comfy_server.base / "output" / "kfp_long"
    whole = client.wait(client.queue(_api("kfp_long/whole", chunk=5, frame_cap=40, width=216)), timeout=600)
    assert whole["status"]["status_str"] == "success"

    pid = client.queue(_api("kfp_long/cut", chunk=5, frame_cap=40, width=216))
    _interrupt_when(out / "cut", 5, 300, comfy_server.url)
    with pytest.raises(PipelineError):
        client.wait(pid, timeout=120)
    kinds = [m[0] for m in comfy_server.get(f"/history/{pid}")[pid]["status"]["messages"]]
    assert "execution_interrupted" in kinds
    # Only complete files and the progress record; the unfinished video is not there.
    record = json.loads((out / "cut" / ".kfp_progress.json").read_text())
    assert 5 <= record["done"] < 40 and record["complete"] is False
    assert not (out / "cut" / "cut.mp4").exists() and not list((out / "cut").glob(".*.partial-*"))
    for name in _frames(out / "cut"):
        Image.open(out / "cut" / name).load()  # every PNG there is whole

    again = client.wait(client.queue(_api("kfp_long/cut", chunk=5, frame_cap=40, width=216)), timeout=600)
    assert again["status"]["status_str"] == "success"
    assert "resumed at frame" in again["outputs"]["4"]["text"][0]
    assert _frames(out / "cut") == _frames(out / "whole") == [f"{t:05d}.png" for t in range(40)]
    for name in _frames(out / "whole"):
        assert (out / "cut" / name).read_bytes() == (out / "whole" / name).read_bytes(), name
    # The server still serves.
    assert comfy_server.get("/system_stats")["system"]


def test_streamed_removal_with_two_flow_passes(comfy_server):
    """flow_passes=2 (new last input) through the streamed graph: complete, named outputs; the
    same frame count and names as one pass, and a different fill."""
    client = ComfyClient(comfy_server.url)
    one = client.wait(client.queue(_api("kfp_long/one", frame_cap=12, width=216)), timeout=300)
    api = _api("kfp_long/two", frame_cap=12, width=216)
    api["4"]["inputs"]["flow_passes"] = 2
    two = client.wait(client.queue(api), timeout=300)
    assert one["status"]["status_str"] == two["status"]["status_str"] == "success"
    out = comfy_server.base / "output" / "kfp_long"
    assert _frames(out / "two") == _frames(out / "one") == [f"{t:05d}.png" for t in range(12)]
    assert json.loads((out / "two" / ".kfp_progress.json").read_text())["complete"] is True
    differ = [
        n for n in _frames(out / "one") if (out / "one" / n).read_bytes() != (out / "two" / n).read_bytes()
    ]
    assert differ, "flow_passes=2 changed nothing"
