"""InpaintModelLoader and MultiscaleRefine nodes, calling ``execute`` as ComfyUI does (under
``torch.inference_mode()``), with a tiny random LaMa saved in a temporary models/inpaint folder.

Needs a ComfyUI checkout (for ``comfy_api``); skipped cleanly without one.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import node_defaults
from safetensors.torch import save_file

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.refine.lama import LamaConfig
from keyframe_propagation.pipelines.refine.multiscale import RefineConfig, refine_frames
from keyframe_propagation.pipelines.testing.lama import random_lama

TINY = LamaConfig(ngf=8, n_blocks=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def refine_nodes(comfy_nodes):
    return importlib.import_module("keyframe_propagation.nodes.refine")


@pytest.fixture(scope="module")
def tiny():
    return random_lama(TINY, seed=3)


@pytest.fixture
def inpaint_dir(tmp_path, refine_nodes, tiny):
    """A models/inpaint folder holding tiny.safetensors, registered with ComfyUI's folder_paths."""
    import folder_paths

    from keyframe_propagation.nodes.common import register_model_folders

    register_model_folders()
    save_file({f"generator.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "tiny.safetensors")
    paths, exts = folder_paths.folder_names_and_paths["inpaint"]
    old = (list(paths), set(exts))
    folder_paths.folder_names_and_paths["inpaint"] = ([str(tmp_path), *paths], exts)
    folder_paths.filename_list_cache.pop("inpaint", None)
    yield tmp_path
    folder_paths.folder_names_and_paths["inpaint"] = old
    folder_paths.filename_list_cache.pop("inpaint", None)


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 6, 8, generator=g)
    images = torch.nn.functional.interpolate(low, size=(96, 128), mode="bicubic").clamp(0, 1)
    masks = torch.zeros(2, 96, 128)
    masks[0, 30:70, 40:90] = 1
    masks[1, 10:40, 60:120] = 1
    return images.permute(0, 2, 3, 1).contiguous(), masks


def _defaults(node_cls) -> dict:
    return {
        inp.id: inp.default
        for inp in node_cls.GET_SCHEMA().inputs
        if getattr(inp, "default", None) is not None
    }


def test_schemas_tooltips_and_unique_ids(refine_nodes):
    for cls in refine_nodes.NODE_LIST:
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("KFP_") and schema.description
        ids = [i.id for i in schema.inputs] + [o.id for o in schema.outputs]
        assert len(ids) == len(set(ids)), f"{schema.node_id}: an input and an output share an id"
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{schema.node_id} output {out.id} has no tooltip"
    refine = refine_nodes.MultiscaleRefine.GET_SCHEMA()
    d = node_defaults(refine_nodes.MultiscaleRefine)
    ref = RefineConfig()
    assert (d["n_iters"], d["lr"], d["min_side"], d["max_scales"], d["px_budget"]) == (
        ref.n_iters,
        ref.lr,
        ref.min_side,
        ref.max_scales,
        ref.px_budget,
    )
    assert d["crop"] is False and d["early_stop"] is False and d["checkpointing"] is False
    assert (d["crop_margin"], d["patience"], d["min_improvement"]) == (
        ref.crop_margin,
        ref.patience,
        ref.min_improvement,
    )
    model_input = next(i for i in refine.inputs if i.id == "model")
    assert "INPAINT_MODEL" in model_input.get_io_type()


def test_loader_scans_models_inpaint_and_loads(inpaint_dir, refine_nodes, tiny):
    import folder_paths

    assert "tiny.safetensors" in folder_paths.get_filename_list("inpaint")
    node = refine_nodes.InpaintModelLoader
    with torch.inference_mode():
        (model,) = node.execute(model_name="tiny.safetensors", dtype="fp32").result
    assert model.config == TINY
    assert all(not p.is_inference() for p in model.parameters())
    assert torch.equal(
        model.state_dict()["model.1.ffc.convl2l.weight"], tiny.state_dict()["model.1.ffc.convl2l.weight"]
    )
    (half,) = node.execute(model_name="tiny.safetensors", dtype="bf16").result
    assert next(half.parameters()).dtype == torch.bfloat16
    with pytest.raises(PipelineError, match="model_name"):
        node.execute(model_name="none", dtype="fp32")


def test_refine_node_under_inference_mode(inpaint_dir, refine_nodes, frames, tiny):
    images, masks = frames
    with torch.inference_mode():  # as ComfyUI runs every node
        (model,) = refine_nodes.InpaintModelLoader.execute(model_name="tiny.safetensors", dtype="fp32").result
        node = refine_nodes.MultiscaleRefine
        args = node_defaults(node) | {
            "image": images,
            "mask": masks,
            "model": model,
            "n_iters": 3,
            "min_side": 48,
        }
        out = node.execute(**args).result[0]
    assert out.shape == images.shape and out.dtype == torch.float32
    known = (masks < 0.5)[..., None].expand_as(images)
    assert torch.equal(out[known], images[known])
    assert float((out - images)[~known].abs().mean()) > 0.01
    # Same as the pipeline called directly, outside inference mode.
    ref = refine_frames(tiny, images, masks, RefineConfig(n_iters=3, min_side=48))
    assert torch.allclose(out, ref, atol=1e-6)


def test_refine_node_options_and_guide(refine_nodes, frames, tiny):
    images, masks = frames
    node = refine_nodes.MultiscaleRefine
    base = node_defaults(node) | {
        "image": images,
        "mask": masks[:1],
        "model": tiny,
        "n_iters": 2,
        "min_side": 48,
    }
    with torch.inference_mode():
        guided = node.execute(**base | {"guide": torch.full((1, 24, 32, 3), 0.5)}).result[0]
        fast = node.execute(
            **base
            | {
                "crop": True,
                "crop_margin": 16,
                "early_stop": True,
                "checkpointing": True,
                "precision": "bf16",
            }
        ).result[0]
        small = node.execute(**base | {"px_budget": 65_536, "output_size": "working"}).result[0]
        plain = node.execute(**base | {"n_iters": 0}).result[0]
    for out in (guided, fast, plain):
        assert out.shape == images.shape
        known = (masks[:1] < 0.5)[..., None].expand_as(images)
        assert torch.equal(out[known], images[known])
    assert small.shape == (2, 96, 128, 3)  # 12,288 px is under the smallest budget: no reduction
    with pytest.raises(PipelineError, match="mask"):
        node.execute(**base | {"mask": masks[:, :50]})
    with pytest.raises(PipelineError, match="model"):
        node.execute(**base | {"model": object()})


def test_cancel_stops_mid_frame(refine_nodes, frames, tiny):
    import comfy.model_management as mm

    images, masks = frames
    node = refine_nodes.MultiscaleRefine
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            node.execute(
                **node_defaults(node) | {"image": images, "mask": masks, "model": tiny, "min_side": 48}
            )
    finally:
        mm.interrupt_current_processing(False)


def test_progress_bar_per_iteration(refine_nodes, frames, tiny, monkeypatch):
    import comfy.utils

    images, masks = frames
    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: seen.append((v, t)))
    node = refine_nodes.MultiscaleRefine
    with torch.inference_mode():
        node.execute(
            **node_defaults(node)
            | {"image": images, "mask": masks, "model": tiny, "n_iters": 3, "min_side": 48}
        )
    # Two frames x (1 coarse pass + 3 passes at the full scale).
    assert seen[-1] == (8, 8)
    assert [v for v, _ in seen] == sorted(v for v, _ in seen) and len(seen) >= 8


@pytest.mark.integration
def test_refine_in_a_real_comfyui_server(comfy_server, tmp_path, tiny):
    """Loader -> refine -> SaveImage queued on a real ComfyUI (its executor runs nodes under
    inference mode), with a tiny LaMa saved as safetensors in models/inpaint."""
    import numpy as np
    from PIL import Image

    from keyframe_propagation.cli.comfy_client import ComfyClient

    base = comfy_server.base
    save_file(tiny.state_dict(), base / "models" / "inpaint" / "tiny.safetensors")
    rng = np.random.default_rng(0)
    img = (rng.random((128, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(base / "input" / "img.png")
    mk = np.zeros((128, 160), np.uint8)
    mk[40:90, 50:110] = 255
    Image.fromarray(mk).save(base / "input" / "mask.png")
    srv = comfy_server
    info = srv.get("/object_info")
    assert "KFP_MultiscaleRefine" in info, srv.log_text()[-3000:]
    spec = info["KFP_InpaintModelLoader"]["input"]["required"]["model_name"]
    assert "tiny.safetensors" in spec[1]["options"]  # models/inpaint registered and scanned
    refine_inputs = {
        "n_iters": 3,
        "lr": 0.002,
        "min_side": 64,
        "max_scales": 3,
        "px_budget": 1_800_000,
        "crop": False,
        "crop_margin": 128,
        "early_stop": False,
        "patience": 2,
        "min_improvement": 0.005,
        "checkpointing": False,
        "precision": "fp32",
        "output_size": "input",
    }
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "img.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}},
        "3": {
            "class_type": "KFP_InpaintModelLoader",
            "inputs": {"model_name": "tiny.safetensors", "dtype": "fp32"},
        },
        "4": {
            "class_type": "KFP_MultiscaleRefine",
            "inputs": {"image": ["1", 0], "mask": ["2", 0], "model": ["3", 0], **refine_inputs},
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "refined"}},
    }
    client = ComfyClient(srv.url)
    entry = client.wait(client.queue(prompt), timeout=180)
    assert entry["status"]["status_str"] == "success"
    (path,) = [p for p in client.download_outputs(entry, tmp_path / "out") if p.suffix == ".png"]
    out = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == img.shape
    known = mk == 0
    assert np.array_equal(out[known], img[known])
    assert np.abs(out[~known].astype(int) - img[~known].astype(int)).mean() > 2
