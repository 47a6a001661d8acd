"""Integration: the refine_highres example workflow in a real ComfyUI, with a tiny LaMa saved as a
TorchScript file under the template's name (models/inpaint/big-lama.pt)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import COMFYUI_PATH, REPO, comfyui_available
from PIL import Image

from keyframe_propagation.cli.comfy_client import ComfyClient, ui_to_api

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


def test_refine_template_converts_and_runs(server):
    info = server.get("/object_info")
    ui = json.loads((REPO / "example_workflows" / "refine_highres.json").read_text())
    api = json.loads((REPO / "example_workflows" / "api" / "refine_highres_api.json").read_text())
    assert ui_to_api(ui, info) == api
    assert "refine_highres" in next(iter(server.get("/api/workflow_templates").values()))
    api["4"]["inputs"].update({"n_iters": 3, "min_side": 96, "max_scales": 2})
    client = ComfyClient(server.url)
    entry = client.wait(client.queue(api), timeout=300)
    assert entry["status"]["status_str"] == "success"
    out = client.download_outputs(entry, server.base / "downloaded")
    result = np.asarray(Image.open(out[0]).convert("RGB"))
    original = np.asarray(Image.open(server.base / "input" / "refine_image.png"))
    assert result.shape == original.shape
    known = np.ones((192, 256), bool)
    known[60:120, 80:180] = False
    assert np.abs(result[known].astype(int) - original[known]).max() <= 1  # known pixels kept
    assert np.abs(result[~known].astype(int) - original[~known]).mean() > 5  # the hole was filled
