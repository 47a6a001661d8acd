"""Integration: the inbetween example workflow in a real ComfyUI, with tiny random SVD weights placed
under the model names the template uses (no download; offline)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from conftest import COMFYUI_PATH, DATA, REPO, comfyui_available
from PIL import Image

from keyframe_propagation.comfy_client import ComfyClient, ui_to_api

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]

PAIR = DATA / "svd_kf_pair_720p"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from test_integration import PACK_DIR_NAME, Server

    from keyframe_propagation.pipelines.svd.loading import extract_reverse_delta
    from keyframe_propagation.pipelines.svd.tiny import build_svd_folder

    base = tmp_path_factory.mktemp("comfy_svd")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
    models = base / "models"
    build_svd_folder(models / "diffusers" / "stable-video-diffusion-img2vid-xt", seed=0)
    # A "released" reverse UNet: the img2vid base with its 32 temporal V/O weights changed.
    img2vid = build_svd_folder(base / "img2vid", seed=1)
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(img2vid, subfolder="unet")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "temporal_transformer_blocks.0.attn1" in name and name.endswith(
                ("to_v.weight", "to_out.0.weight")
            ):
                p.add_(torch.randn_like(p) * 0.1)
    unet.save_pretrained(base / "released" / "unet")
    (models / "reverse_motion").mkdir(parents=True)
    extract_reverse_delta(
        base / "released", img2vid, models / "reverse_motion" / "svd_reverse_motion_delta.safetensors", "fp32"
    )
    inp = base / "input"
    inp.mkdir()
    for name, fallback in (("start", 0), ("end", 1)):
        src = PAIR / f"{name}.png"
        if src.is_file():
            Image.open(src).convert("RGB").resize((256, 144)).save(
                inp / f"inbetween_{'first' if fallback == 0 else 'last'}.png"
            )
        else:
            rng = np.random.default_rng(fallback)
            Image.fromarray(rng.integers(0, 255, (144, 256, 3), dtype=np.uint8)).save(
                inp / f"inbetween_{'first' if fallback == 0 else 'last'}.png"
            )
    srv = Server(base)
    srv.start()
    yield srv
    srv.stop()


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
