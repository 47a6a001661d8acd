"""ReverseSVDLoader and DualDirectionalSampler nodes, executed directly as ComfyUI does, with tiny weights
placed in temporary model folders. Needs a ComfyUI checkout (skipped cleanly without one)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import node_defaults

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.svd.loading import extract_reverse_delta
from keyframe_propagation.pipelines.testing.svd import build_reverse_unet_folder, build_svd_folder
from keyframe_propagation.pipelines.types import Keyframes as KeyframesData


@pytest.fixture(scope="module")
def inb(comfy_nodes, tmp_path_factory):
    """The node module, with tiny SVD, base and reverse weights in ComfyUI's model folders."""
    import folder_paths

    import keyframe_propagation.nodes.inbetween as inb

    root = tmp_path_factory.mktemp("svdnodes")
    build_svd_folder(root / "diffusers" / "svd_tiny_xt", seed=0)
    base = build_svd_folder(root / "diffusers" / "svd_tiny_img2vid", seed=1)
    build_reverse_unet_folder(base, root / "reverse_motion" / "svd_reverse_motion_with_attnflip")
    extract_reverse_delta(
        root / "reverse_motion" / "svd_reverse_motion_with_attnflip", base,
        root / "reverse_motion" / "tiny_reverse_delta.safetensors", "fp32",
    )  # fmt: skip
    for kind in ("diffusers", "reverse_motion", "checkpoints"):
        (root / kind).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(root / kind), is_default=True)
    return inb


def _defaults(node_cls) -> dict:
    return {i.id: i.default for i in node_cls.GET_SCHEMA().inputs if getattr(i, "default", None) is not None}


def _image(seed: int, n: int = 1, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


FAST = {"num_frames": 4, "steps": 2, "noise_injection_steps": 1, "decode_chunk_size": 4}


@pytest.fixture(scope="module")
def loaded(inb):
    node = inb.ReverseSVDLoader
    args = node_defaults(node) | {
        "svd_model": "diffusers/svd_tiny_xt",
        "reverse_weights": "reverse_motion/tiny_reverse_delta.safetensors",
        "dtype": "fp32",
    }
    return node.execute(**args).result[0]


def test_schema_tooltips_and_unique_ids(inb):
    assert [c.GET_SCHEMA().node_id for c in inb.NODE_LIST] == [
        "KFP_ReverseSVDLoader",
        "KFP_DualDirectionalSampler",
    ]
    for cls in inb.NODE_LIST:
        schema = cls.GET_SCHEMA()
        assert schema.description and schema.category == "keyframe propagation"
        ids = [i.id for i in schema.inputs] + [o.id for o in schema.outputs]
        assert len(ids) == len(set(ids)), ids
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_loader_lists_models_and_both_reverse_forms_agree(inb, loaded):
    import folder_paths

    assert "reverse_motion" in folder_paths.folder_names_and_paths
    schema = {i.id: i for i in inb.ReverseSVDLoader.GET_SCHEMA().inputs}
    assert "diffusers/svd_tiny_xt" in schema["svd_model"].options
    rev = schema["reverse_weights"].options
    assert rev[0] == "none" and "reverse_motion/tiny_reverse_delta.safetensors" in rev
    assert "reverse_motion/svd_reverse_motion_with_attnflip/unet" in rev
    assert "diffusers/svd_tiny_img2vid" in schema["base_unet"].options
    args = node_defaults(inb.ReverseSVDLoader) | {
        "svd_model": "diffusers/svd_tiny_xt",
        "reverse_weights": "reverse_motion/svd_reverse_motion_with_attnflip/unet",
        "base_unet": "diffusers/svd_tiny_img2vid",
        "dtype": "fp32",
    }
    other = inb.ReverseSVDLoader.execute(**args).result[0]
    assert loaded.model.has_reverse and set(other.model.reverse) == set(loaded.model.reverse)
    for k, w in loaded.model.reverse.items():
        assert torch.equal(w, other.model.reverse[k])
    with pytest.raises(PipelineError, match="base_unet|base"):
        inb.ReverseSVDLoader.execute(**args | {"base_unet": "none"})
    with pytest.raises(PipelineError, match="svd_model"):
        inb.ReverseSVDLoader.execute(**args | {"svd_model": "diffusers/../../etc"})


def test_sampler_two_keyframes_fused_and_reference(inb, loaded):
    node = inb.DualDirectionalSampler
    args = node_defaults(node) | FAST | {"model": loaded, "first_frame": _image(1), "last_frame": _image(2)}
    frames, latent = node.execute(**args).result
    assert frames.shape == (4, 64, 64, 3) and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert latent["samples"].shape == (4, 4, 8, 8)
    ref_frames, ref_latent = node.execute(**args | {"mode": "reference"}).result
    # fp32 rounding differs between one batched call and two; the first EDM steps multiply it by
    # sigma (~700, 2 steps here), so compare relative to the latents' size.
    scale = float(latent["samples"].abs().max())
    assert float((ref_latent["samples"] - latent["samples"]).abs().max()) < 1e-3 * scale
    assert float((ref_frames - frames).abs().max()) < 1e-4
    # Latents are given unscaled (as ComfyUI's VAE Encode): decoding them with the SVD VAE gives the frames.
    vae = loaded.model.vae
    with torch.no_grad():
        dec = vae.decode(latent["samples"], num_frames=4).sample
    torch.testing.assert_close((dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), frames, atol=1e-4, rtol=1e-4)


def test_sampler_with_keyframes_makes_segments(inb, loaded):
    node = inb.DualDirectionalSampler
    clip = _image(3, n=7)
    kf = KeyframesData(indices=[0, 3, 6], size=(64, 64), num_frames=7)
    args = (
        node_defaults(node) | FAST | {"model": loaded, "first_frame": clip, "keyframes": kf, "num_frames": 0}
    )
    frames, latent = node.execute(**args).result
    assert frames.shape == (7, 64, 64, 3) and latent["samples"].shape[0] == 7  # 4 + 4 - 1 shared
    frames, _ = node.execute(**args | {"num_frames": 3}).result
    assert frames.shape[0] == 5
    with pytest.raises(PipelineError, match="keyframes"):
        node.execute(**args | {"keyframes": KeyframesData(indices=[0, 9], size=(64, 64))})


def test_sampler_input_errors(inb, loaded):
    node = inb.DualDirectionalSampler
    args = node_defaults(node) | FAST | {"model": loaded, "first_frame": _image(1)}
    with pytest.raises(PipelineError, match="last_frame"):
        node.execute(**args)
    with pytest.raises(PipelineError, match="multiple of 64"):
        node.execute(**args | {"first_frame": _image(1, h=60), "last_frame": _image(2, h=60)})
    frames, _ = node.execute(
        **args | {"first_frame": _image(1, h=60), "last_frame": _image(2, h=60), "height": 64, "steps": 1}
    ).result
    assert frames.shape[1:3] == (64, 64)
    with pytest.raises(PipelineError, match="model"):
        node.execute(**args | {"model": object(), "last_frame": _image(2)})


def test_cancel_and_progress(inb, loaded, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    node = inb.DualDirectionalSampler
    args = node_defaults(node) | FAST | {"model": loaded, "first_frame": _image(1), "last_frame": _image(2)}
    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: seen.append((v, t)))
    node.execute(**args)
    assert seen[-1] == (4, 4) and [v for v, _ in seen] == [1, 2, 3, 4]  # 2 steps + 1 re-injection + decode
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(**args)
    finally:
        mm.interrupt_current_processing(False)
    assert loaded.model.state.mode == "forward" and not loaded.model.state.maps
