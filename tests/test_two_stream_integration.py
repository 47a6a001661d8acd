"""Integration: the two-stream model in a real ComfyUI server, with a tiny random checkpoint placed in
its models/two_stream folder. Reuses the server helper of ``test_integration.py``; skipped cleanly
without a ComfyUI checkout."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import COMFYUI_PATH, REPO, comfyui_available
from PIL import Image

from keyframe_propagation.cli.comfy_client import ComfyClient
from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.testing.synthetic import make_clip

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]

LOADER = "KFP_TwoStreamModelLoader"
N_FRAMES = 8


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session's ComfyUI, plus a broken checkpoint and a small synthetic clip (input/tsclip)."""
    base = comfy_server.base
    (base / "models" / "two_stream" / "broken.ckpt").write_bytes(b"\x00" * 64)
    clip = make_clip(num_frames=N_FRAMES, height=48, width=64, seed=12)
    for sub in ("frames", "masks"):
        (base / "input" / "tsclip" / sub).mkdir(parents=True, exist_ok=True)
    for t in range(N_FRAMES):
        Image.fromarray((clip.frames[t].numpy() * 255 + 0.5).astype(np.uint8)).save(
            base / "input" / "tsclip" / "frames" / f"{t:03d}.png"
        )
        Image.fromarray((clip.masks[t].numpy() * 255).astype(np.uint8)).save(
            base / "input" / "tsclip" / "masks" / f"{t:03d}.png"
        )
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    info = server.get("/object_info")
    if LOADER not in info:
        pytest.skip(f"{LOADER} is not registered: add nodes.two_stream.NODE_LIST to nodes/__init__.py")
    return info


def _prompt(model_name: str) -> dict:
    return {
        "1": {
            "class_type": "KFP_LoadKeyframes",
            "inputs": {
                "frames": "tsclip/frames",
                "masks": "tsclip/masks",
                "keyframes": "0",
                "frame_cap": 0,
                "skip_first": 0,
                "every_nth": 1,
                "width": 0,
                "height": 0,
                "invert_mask": False,
            },
        },
        "2": {"class_type": LOADER, "inputs": {"model_name": model_name, "dtype": "fp32"}},
        "3": {
            "class_type": "KFP_TwoStreamInpaint",
            "inputs": {
                "chunk": 20,
                "lookahead": 40,
                "mask_dilation": 0,
                "consistency": 1.0,
                "telea_radius": 5,
                "generate_every": 4,
                "keyframe_offsets": "-4,4",
                "work_long_side": 64,
                "images": ["1", 0],
                "masks": ["1", 1],
                "keyframes": ["1", 2],
                "model": ["2", 0],
            },
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "two_stream/removed", "images": ["3", 0]},
        },
    }


def test_loader_is_listed_with_the_model_folder(object_info):
    info = object_info[LOADER]
    assert info["category"] == "keyframe propagation" and info["description"]
    spec = info["input"]["required"]["model_name"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert "tiny.safetensors" in options and "broken.ckpt" in options
    for name, spec in info["input"]["required"].items():
        assert spec[1].get("tooltip"), name
    assert all(info["output_tooltips"])
    assert "TWO_STREAM_MODEL" in info["output"]


def test_model_workflow_runs(server, object_info):
    client = ComfyClient(server.url)
    entry = client.wait(client.queue(_prompt("tiny.safetensors")), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert len(entry["outputs"]["4"]["images"]) == N_FRAMES


def test_broken_checkpoint_gives_a_clear_error(server, object_info):
    client = ComfyClient(server.url)
    with pytest.raises(PipelineError, match="broken.ckpt"):
        client.wait(client.queue(_prompt("broken.ckpt")), timeout=120)


def test_example_workflow_converts_and_runs(server, object_info):
    """example_workflows/remove_object_two_stream.json: its API copy equals the converted template
    and runs to success (tiny model under the template's file name, CPU settings)."""
    import json

    from keyframe_propagation.cli.comfy_client import ui_to_api

    ui = json.loads((REPO / "example_workflows" / "remove_object_two_stream.json").read_text())
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_two_stream_api.json").read_text())
    assert ui_to_api(ui, object_info) == api
    api["1"]["inputs"].update({"frames": "tsclip/frames", "masks": "tsclip/masks"})  # the small clip
    api["2"]["inputs"]["dtype"] = "fp32"
    api["4"]["inputs"].update({"generate_every": 4, "keyframe_offsets": "-4,4", "work_long_side": 64})
    client = ComfyClient(server.url)
    entry = client.wait(client.queue(api), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert len(entry["outputs"]["5"]["images"]) == N_FRAMES
