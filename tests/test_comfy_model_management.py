"""In a real ComfyUI (CPU): the pack's LaMa is loaded by ComfyUI's model management while Multiscale
Refine runs, stays among ComfyUI's loaded models after the run, is unloaded by ComfyUI's /free route,
and a second run after that loads it again and works.

ComfyUI logs "Requested to load <class>" each time load_models_gpu takes in a model it does not hold
yet: the pack's networks are held as ``PackModel`` (nodes/common.py)."""

from __future__ import annotations

import json

import pytest
from conftest import COMFYUI_PATH, REPO, comfyui_available

from keyframe_propagation.cli.comfy_client import ComfyClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]

LOADED = "Requested to load PackModel"


def run(client: ComfyClient, api: dict, n_iters: int) -> None:
    api["4"]["inputs"].update({"n_iters": n_iters, "min_side": 96, "max_scales": 2})
    entry = client.wait(client.queue(api), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_lama_is_loaded_by_comfyui_and_freed_by_its_free_route(comfy_server):
    server = comfy_server
    client = ComfyClient(server.url)
    api = json.loads((REPO / "example_workflows" / "api" / "refine_highres_api.json").read_text())
    run(client, api, 2)
    loads = server.log_text().count(LOADED)
    assert loads >= 1  # ComfyUI loaded the pack's model itself

    run(client, api, 3)  # another refinement, same loader output
    assert server.log_text().count(LOADED) == loads  # still held by ComfyUI: nothing to load

    client._request("/free", {"unload_models": True})
    # ComfyUI applies the flag after the next queue item: this one is all cached (no node runs).
    run(client, api, 3)
    run(client, api, 4)  # the second run after the unload
    assert server.log_text().count(LOADED) == loads + 1  # ComfyUI had unloaded it and loads it again
