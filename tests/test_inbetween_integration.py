"""Integration: the inbetween example workflow in a real ComfyUI, with tiny random SVD weights placed
under the model names the template uses (no download; offline)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from conftest import COMFYUI_PATH, DATA, REPO, comfyui_available
from PIL import Image

from keyframe_propagation.cli.comfy_client import ComfyClient, ui_to_api

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]

PAIR = DATA / "svd_kf_pair_720p"


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


def test_inbetween_nodes_listed(server):
    info = server.get("/object_info")
    for node_id in ("KFP_ReverseSVDLoader", "KFP_DualDirectionalSampler"):
        assert node_id in info
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name}"
    # The template's model names are offered once the files are in place.
    spec = info["KFP_ReverseSVDLoader"]["input"]["required"]["svd_model"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert "diffusers/stable-video-diffusion-img2vid-xt" in options


def test_inbetween_template_converts_to_its_api_copy(server):
    info = server.get("/object_info")
    ui = json.loads((REPO / "example_workflows" / "inbetween.json").read_text())
    api = json.loads((REPO / "example_workflows" / "api" / "inbetween_api.json").read_text())
    assert ui_to_api(ui, info) == api
    templates = server.get("/api/workflow_templates")
    assert "inbetween" in next(iter(templates.values()))


def test_inbetween_api_example_runs_headless(server):
    api = json.loads((REPO / "example_workflows" / "api" / "inbetween_api.json").read_text())
    api["3"]["inputs"]["dtype"] = "fp32"  # CPU
    api["4"]["inputs"].update(
        {
            "width": 128,
            "height": 64,
            "num_frames": 4,
            "steps": 2,
            "noise_injection_steps": 1,
            "decode_chunk_size": 4,
        }
    )
    client = ComfyClient(server.url)
    entry = client.wait(client.queue(api), timeout=600)
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["5"]["images"]
    assert len(images) == 4
    out = client.download_outputs(entry, server.base / "downloaded")
    png = next(p for p in out if p.suffix == ".png")
    assert Image.open(png).size == (128, 64)
    assert any(p.suffix == ".mp4" for p in out)
