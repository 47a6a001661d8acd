"""TwoStreamModelLoader and TwoStreamInpaint with a model, calling ``execute`` directly (no server).

A tiny random checkpoint is written to a temporary folder registered as ComfyUI's ``two_stream`` model
folder. Needs a ComfyUI checkout (for ``comfy_api``); skipped cleanly without one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import node_defaults

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.testing.synthetic import make_clip
from keyframe_propagation.pipelines.two_stream.io import save_two_stream
from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def node_module(comfy_nodes):
    import keyframe_propagation.nodes.two_stream as mod

    return mod


@pytest.fixture(scope="module")
def tiny() -> TwoStreamGenerator:
    torch.manual_seed(0)
    return TwoStreamGenerator("tiny").eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, comfy_nodes, tiny):
    """A folder registered as models/two_stream holding a tiny checkpoint in two formats."""
    import folder_paths

    from keyframe_propagation.nodes.common import register_model_folders

    folder = tmp_path_factory.mktemp("two_stream_models")
    save_two_stream(tiny, folder / "tiny.safetensors")
    sd = {"generator." + k: v for k, v in tiny.state_dict().items()}
    torch.save({"state_dict": sd, "global_step": 1}, folder / "tiny_lightning.ckpt")
    (folder / "broken.ckpt").write_bytes(b"\x00" * 100)
    register_model_folders()
    folder_paths.add_model_folder_path("two_stream", str(folder))
    return folder


@pytest.fixture(scope="module")
def clip():
    return make_clip(num_frames=10, height=72, width=120, seed=3)


def test_schema_ids_unique_and_tooltips(node_module):
    for cls in node_module.NODE_LIST:
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("KFP_") and schema.description
        ids = [i.id for i in schema.inputs] + [o.id for o in schema.outputs]
        assert len(ids) == len(set(ids)), ids
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_loader_lists_and_loads_the_folder(node_module, model_dir, tiny):
    import folder_paths

    names = folder_paths.get_filename_list("two_stream")
    assert {"tiny.safetensors", "tiny_lightning.ckpt"} <= set(names)
    loader = node_module.TwoStreamModelLoader
    for name in ("tiny.safetensors", "tiny_lightning.ckpt"):
        with torch.inference_mode():  # as ComfyUI runs nodes
            (model,) = loader.execute(model_name=name, dtype="fp32").result
        assert not next(model.parameters()).is_inference()
        assert isinstance(model, TwoStreamGenerator) and model.config == tiny.config
        assert next(model.parameters()).device.type == "cpu"  # the offload device here
    (model,) = loader.execute(model_name="tiny.safetensors", dtype="bf16").result
    assert next(model.parameters()).dtype == torch.bfloat16


def test_loader_errors_name_the_input(node_module, model_dir):
    loader = node_module.TwoStreamModelLoader
    with pytest.raises(PipelineError, match="model_name"):
        loader.execute(model_name="none", dtype="fp32")
    with pytest.raises(PipelineError, match="broken.ckpt"):
        loader.execute(model_name="broken.ckpt", dtype="fp32")
    with pytest.raises(PipelineError, match="dtype"):
        loader.execute(model_name="tiny.safetensors", dtype="fp8")


def test_inpaint_node_with_the_model(comfy_nodes, node_module, model_dir, clip, monkeypatch):
    import comfy.utils

    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: seen.append((v, t)))
    with torch.inference_mode():  # as ComfyUI runs nodes
        (model,) = node_module.TwoStreamModelLoader.execute(
            model_name="tiny.safetensors", dtype="fp32"
        ).result
        node = comfy_nodes.TwoStreamInpaint
        args = node_defaults(node) | {
            "images": clip.frames,
            "masks": clip.masks,
            "model": model,
            "generate_every": 4,
            "keyframe_offsets": "-4,4,8",
            "work_long_side": 96,
        }
        filled, unseen = node.execute(**args).result[:2]
    assert filled.shape == clip.frames.shape and unseen.shape == clip.masks.shape
    known = clip.masks < 0.5
    assert torch.equal(filled[known], clip.frames[known])
    # One progress unit per chunk: 10 frames, a generated frame every 4 -> 3 chunks.
    assert seen and seen[-1] == (3, 3) and [v for v, _ in seen] == sorted(v for v, _ in seen)
    assert next(model.parameters()).device.type == "cpu"  # back on the offload device

    with pytest.raises(PipelineError, match="keyframe_offsets"):
        node.execute(**args | {"keyframe_offsets": "ten"})
    with pytest.raises(PipelineError, match="model"):
        node.execute(**args | {"model": "not a model"})


def test_inpaint_node_with_model_and_flow(comfy_nodes, node_module, model_dir, clip):
    from keyframe_propagation.pipelines.types import Keyframes

    (model,) = node_module.TwoStreamModelLoader.execute(model_name="tiny_lightning.ckpt", dtype="fp32").result
    flow_node = comfy_nodes.FlowEstimate
    kf = Keyframes(indices=[0, 4, 8], size=(72, 120), num_frames=10)
    flow = flow_node.execute(
        **node_defaults(flow_node)
        | {"images": clip.frames, "masks": clip.masks, "keyframe_pairs": True, "keyframes": kf}
    ).result[0]
    node = comfy_nodes.TwoStreamInpaint
    args = node_defaults(node) | {
        "images": clip.frames,
        "masks": clip.masks,
        "model": model,
        "flow": flow,
        "keyframes": kf,
        "generate_every": 4,
        "keyframe_offsets": "-4,4",
    }
    filled, _ = node.execute(**args).result[:2]
    known = clip.masks < 0.5
    assert torch.equal(filled[known], clip.frames[known])


def test_cancel_stops_the_model_path(comfy_nodes, node_module, model_dir, clip):
    import comfy.model_management as mm

    (model,) = node_module.TwoStreamModelLoader.execute(model_name="tiny.safetensors", dtype="fp32").result
    node = comfy_nodes.TwoStreamInpaint
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(**node_defaults(node) | {"images": clip.frames, "masks": clip.masks, "model": model})
    finally:
        mm.interrupt_current_processing(False)
    assert next(model.parameters()).device.type == "cpu"


def test_multiscale_refine_accepts_the_two_stream_model(comfy_nodes, node_module, model_dir):
    """The model has the refinement split (without keyframes), so MultiscaleRefine can drive it."""
    refine = pytest.importorskip("keyframe_propagation.nodes.refine")
    image = torch.rand(1, 64, 96, 3)
    mask = torch.zeros(1, 64, 96)
    mask[:, 20:40, 30:60] = 1
    with torch.inference_mode():  # as ComfyUI runs nodes
        (model,) = node_module.TwoStreamModelLoader.execute(
            model_name="tiny.safetensors", dtype="fp32"
        ).result
        node = refine.MultiscaleRefine
        args = node_defaults(node) | {
            "image": image,
            "mask": mask,
            "model": model,
            "n_iters": 2,
            "min_side": 32,
        }
        out = node.execute(**args).result[0]
    assert out.shape == image.shape
    known = mask[..., None].expand_as(image) < 0.5
    assert torch.allclose(out[known], image[known])
