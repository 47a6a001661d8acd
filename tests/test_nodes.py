"""The nodes' glue, calling ``execute`` directly as ComfyUI's own comfy_extras tests do.

Needs a ComfyUI checkout (for ``comfy_api``); skipped cleanly without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import node_defaults
from PIL import Image

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.testing.synthetic import make_clip, psnr_in_mask


@pytest.fixture
def input_dir(tmp_path, comfy_nodes):
    import folder_paths

    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_input_directory(old)


@pytest.fixture(scope="module")
def clip():
    return make_clip(num_frames=10, height=96, width=160, seed=3)


def _write_clip(folder, clip):
    (folder / "frames").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for t in range(clip.frames.shape[0]):
        Image.fromarray((clip.frames[t].numpy() * 255 + 0.5).astype(np.uint8)).save(
            folder / "frames" / f"{t:05d}.png"
        )
        Image.fromarray((clip.masks[t].numpy() * 255).astype(np.uint8)).save(
            folder / "masks" / f"{t:05d}.png"
        )


def test_every_input_and_output_has_a_tooltip(comfy_nodes):
    for cls in comfy_nodes.NODES:
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("KFP_")
        assert schema.description
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{schema.node_id} output {out.id} has no tooltip"


def test_load_keyframes_folder(input_dir, comfy_nodes, clip):
    _write_clip(input_dir / "shot", clip)
    node = comfy_nodes.LoadKeyframes
    args = node_defaults(node) | {"frames": "shot/frames", "masks": "shot/masks", "keyframes": "0,-1"}
    out = node.execute(**args)
    frames, masks, kf, _ = out.result
    assert frames.shape == (10, 96, 160, 3) and masks.shape == (10, 96, 160)
    assert torch.allclose(frames, clip.frames, atol=1 / 255)
    assert torch.equal(masks, clip.masks)
    assert kf.indices == [0, 9] and kf.size == (96, 160) and kf.num_frames == 10
    assert kf.names[0] == "00000"
    # The filmstrip for the editor: kept on the server, one picture per frame, hole tinted.
    meta = out.ui["kfp_filmstrip"][0]
    assert meta["num_frames"] == 10 and meta["keyframes"] == [0, 9] and meta["frames"] == list(range(10))
    from keyframe_propagation.nodes.preview import FILMSTRIPS

    jpeg = FILMSTRIPS.picture(meta["run"], 3)
    img = np.asarray(Image.open(__import__("io").BytesIO(jpeg)))
    assert img.shape == (meta["height"], meta["width"], 3)
    assert "10 frames" in out.ui["text"][0]
    # Selection, resize and edited keyframes together.
    edited = torch.zeros(1, 48, 80, 3)
    args |= {"every_nth": 2, "width": 80, "height": 0, "keyframes": "1", "edited_keyframes": edited}
    frames, masks, kf, _ = node.execute(**args).result
    assert frames.shape == (5, 48, 80, 3)
    assert kf.edited == [1] and float(masks[1].sum()) == 0.0 and float(frames[1].abs().sum()) == 0.0
    assert kf.names == ["00000", "00002", "00004", "00006", "00008"]


def test_load_keyframes_errors_name_the_input(input_dir, comfy_nodes, clip):
    _write_clip(input_dir / "shot", clip)
    node = comfy_nodes.LoadKeyframes
    base = node_defaults(node) | {"frames": "shot/frames", "masks": "shot/masks"}
    with pytest.raises(PipelineError, match="frames"):
        node.execute(**base | {"frames": "nope"})
    with pytest.raises(PipelineError, match="frames"):
        node.execute(**base | {"frames": "../../etc"})
    with pytest.raises(PipelineError, match="keyframes"):
        node.execute(**base | {"keyframes": "0,99"})
    with pytest.raises(PipelineError, match="frames"):
        node.execute(**base | {"frames": ""})


def test_load_keyframes_fingerprint_changes_when_a_file_changes(input_dir, comfy_nodes, clip):
    _write_clip(input_dir / "shot", clip)
    node = comfy_nodes.LoadKeyframes
    args = node_defaults(node) | {"frames": "shot/frames", "masks": "shot/masks"}
    a = node.fingerprint_inputs(**args)
    assert node.fingerprint_inputs(**args) == a
    Image.fromarray(np.zeros((96, 160), np.uint8)).save(input_dir / "shot" / "masks" / "00003.png")
    assert node.fingerprint_inputs(**args) != a
    assert node.fingerprint_inputs(**args | {"keyframes": "3"}) != node.fingerprint_inputs(**args)


def test_load_keyframes_from_image_and_mask_inputs(input_dir, comfy_nodes, clip):
    node = comfy_nodes.LoadKeyframes
    args = node_defaults(node) | {"images": clip.frames, "mask": clip.masks[:1], "skip_first": 2}
    frames, masks, kf, _ = node.execute(**args).result
    assert frames.shape[0] == 8 and torch.equal(frames, clip.frames[2:])
    assert torch.equal(masks, clip.masks[:1].expand(8, -1, -1))
    assert kf.source == "IMAGE input"


def test_flow_then_inpaint_nodes(comfy_nodes, clip):
    flow_node, inpaint = comfy_nodes.FlowEstimate, comfy_nodes.TwoStreamInpaint
    flow_out = flow_node.execute(**node_defaults(flow_node) | {"images": clip.frames, "masks": clip.masks})
    flow, preview, occ = flow_out.result
    _assert_animated_preview(flow_out.ui, frames=9, size=(96, 160 * 2 + 4))
    assert flow.num_frames == 10 and preview.shape == (9, 96, 160, 3) and occ.shape == (9, 96, 160)
    assert flow.forward.dtype == torch.float16  # the clip's flow is kept compact
    assert 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0
    inpaint_out = inpaint.execute(
        **node_defaults(inpaint) | {"images": clip.frames, "masks": clip.masks, "flow": flow}
    )
    filled, unseen = inpaint_out.result[:2]
    _assert_animated_preview(inpaint_out.ui, frames=10, size=(96, 160))
    assert filled.shape == clip.frames.shape and unseen.shape == clip.masks.shape
    known = clip.masks < 0.5
    assert torch.equal(filled[known], clip.frames[known])
    from keyframe_propagation.pipelines.propagate import telea_fill

    telea = torch.stack([telea_fill(f, m) for f, m in zip(clip.frames, clip.masks)])
    assert psnr_in_mask(filled, clip.truth, clip.masks) > psnr_in_mask(telea, clip.truth, clip.masks) + 3.0


def _assert_animated_preview(shown: dict, frames: int, size: tuple[int, int]) -> None:
    """A node's ui: one looping WebP in ComfyUI's temp folder with ``frames`` frames of ``size``."""
    import os

    import folder_paths

    assert shown["animated"] == (True,) and len(shown["images"]) == 1
    saved = shown["images"][0]
    assert saved["type"] == "temp"
    path = os.path.join(folder_paths.get_temp_directory(), saved["subfolder"], saved["filename"])
    with Image.open(path) as im:
        assert im.format == "WEBP" and im.n_frames == frames and im.size == (size[1], size[0])


def test_inpaint_node_input_errors(comfy_nodes, clip):
    node = comfy_nodes.TwoStreamInpaint
    base = node_defaults(node) | {"images": clip.frames, "masks": clip.masks}
    with pytest.raises(PipelineError, match="masks"):
        node.execute(**base | {"masks": clip.masks[:3]})
    with pytest.raises(PipelineError, match="masks"):
        node.execute(**base | {"masks": clip.masks[:, :50]})
    with pytest.raises(PipelineError, match="flow"):
        flow_node = comfy_nodes.FlowEstimate
        flow = flow_node.execute(**node_defaults(flow_node) | {"images": clip.frames[:4]}).result[0]
        node.execute(**base | {"flow": flow})
    with pytest.raises(PipelineError, match="raft_model"):
        flow_node = comfy_nodes.FlowEstimate
        flow_node.execute(**node_defaults(flow_node) | {"images": clip.frames[:2], "backend": "raft"})


def test_cancel_stops_the_node(comfy_nodes, clip):
    """ComfyUI's interrupt flag (the Cancel button) stops the node between frames."""
    import comfy.model_management as mm

    node = comfy_nodes.TwoStreamInpaint
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(**node_defaults(node) | {"images": clip.frames, "masks": clip.masks})
    finally:
        mm.interrupt_current_processing(False)


def test_progress_bar_receives_updates(comfy_nodes, clip, monkeypatch):
    import comfy.utils

    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: seen.append((v, t)))
    node = comfy_nodes.TwoStreamInpaint
    node.execute(**node_defaults(node) | {"images": clip.frames, "masks": clip.masks})
    assert seen and seen[-1] == (10, 10)
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)


def test_progress_text_is_sent_to_the_running_node(comfy_nodes, clip, monkeypatch):
    """Inside a prompt, the pipeline's text ("chunk 1/1") reaches ComfyUI's progress-text message."""
    import sys
    import types

    from comfy_execution.utils import CurrentNodeContext

    sent = []

    class PromptServer:  # ComfyUI's server module is not importable outside a running ComfyUI
        def send_progress_text(self, text, node_id, sid=None):
            sent.append((node_id, text))

    PromptServer.instance = PromptServer()
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=PromptServer))
    node = comfy_nodes.TwoStreamInpaint
    with CurrentNodeContext("prompt", "7"):
        node.execute(**node_defaults(node) | {"images": clip.frames, "masks": clip.masks})
    assert sent and all(node_id == "7" for node_id, _ in sent)
    assert any(text.startswith("chunk 1/") for _, text in sent)
    assert len(sent) == len({t for _, t in sent})  # only changes are sent
    sent.clear()
    node.execute(**node_defaults(node) | {"images": clip.frames, "masks": clip.masks})
    assert not sent  # outside a prompt: the bar alone
