"""Golden outputs of every pipeline on small fixed inputs, recorded before the code was reorganised.

Each case computes named tensors with the pack's public API; the test compares them with the file
``tests/golden/<case>.safetensors``. A change of numerical behaviour makes these fail: if it is
deliberate, re-record with ``python tests/test_golden.py --record`` and say so in the change's note.
Cases run on one thread (the recorded values do not depend on the thread count, but timing does).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "golden"

# name -> (case function, absolute tolerance relative to the reference's largest magnitude)
CASES: dict[str, tuple[Callable[[Path], dict[str, torch.Tensor]], float]] = {}


def case(tol: float = 1e-5):
    def deco(fn: Callable[[Path], dict[str, torch.Tensor]]):
        CASES[fn.__name__] = (fn, tol)
        return fn

    return deco


def _clip(frames: int = 8, h: int = 32, w: int = 48, seed: int = 3):
    from keyframe_propagation.pipelines.testing.synthetic import make_clip

    return make_clip(num_frames=frames, height=h, width=w, pan=2.0, object_size=0.25, seed=seed)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


@case()
def clip_preparation(tmp: Path) -> dict[str, torch.Tensor]:
    """Frames and masks read from files, masks matched by name, resized, an edited keyframe applied."""
    from keyframe_propagation.pipelines import clip as fr

    clip = _clip(frames=6, h=40, w=64)
    names = [f"f{t:03d}" for t in range(6)]
    fr.save_frames(clip.frames, tmp / "frames", names)
    (tmp / "masks").mkdir()
    for t, m in enumerate(clip.masks):
        Image.fromarray((m.numpy() * 255).astype(np.uint8)).save(tmp / "masks" / f"{names[t]}.png")
    edited = torch.rand(1, 24, 30, 3, generator=torch.Generator().manual_seed(1))
    # The one path of Load Keyframes and `remove`: select, match masks by name, resize, edit.
    prepared = fr.prepare_clip(
        tmp / "frames", tmp / "masks", keyframes="0,-1", skip_first=1, width=32, edited=edited
    )
    frames, masks, idx = prepared.frames, prepared.masks, prepared.keyframes.edited
    return {"frames": frames, "masks": masks, "edited": torch.tensor(idx)}


@case()
def flows(tmp: Path) -> dict[str, torch.Tensor]:
    """DIS flow of a clip with masks filled and keyframe pairs, then the flow operations."""
    from keyframe_propagation.pipelines.flow import (
        FlowEstimator,
        complete_flow,
        compute_flows,
        fb_error,
        fill_flow_in_mask,
        flow_pair,
        flow_to_color,
        resize_flow,
        warp,
    )

    clip = _clip(frames=6)
    fs = compute_flows(clip.frames, FlowEstimator("dis", "medium"), masks=clip.masks, keyframes=[0, 5])
    small = compute_flows(
        clip.frames[:3], FlowEstimator("dis", "fast", work_size=(32, 32)), store_size=(16, 24)
    )
    f, b, ef, eb = flow_pair(small, 1, (32, 48))
    raw = FlowEstimator("dis", "ultrafast")(clip.frames[:2], clip.frames[1:3])
    hole = clip.masks[0]
    return {
        "forward": fs.forward,
        "backward": fs.backward,
        "err_f": fs.fb_error_forward,
        "err_b": fs.fb_error_backward,
        "key_2_5": fs.keyframe[(2, 5)][0],
        "key_5_0_err": fs.keyframe[(5, 0)][2],
        "pair_f": f,
        "pair_eb": eb,
        "raw": raw,
        "filled_idw": fill_flow_in_mask(raw, clip.masks[:2], seed=3),
        "complete_homography": complete_flow(raw[0], hole, "homography", seed=1),
        "complete_idw": complete_flow(raw[0], hole, "idw", seed=1),
        "warp": warp(clip.frames[1:3].permute(0, 3, 1, 2), raw),
        "fb": fb_error(raw, raw.flip(0)),
        "resized": resize_flow(raw, (16, 40)),
        "color": flow_to_color(raw),
    }


@case()
def propagation(tmp: Path) -> dict[str, torch.Tensor]:
    """Flow propagation with chunks, lookahead and an edited keyframe; and from a FlowSet."""
    from keyframe_propagation.pipelines.flow import FlowEstimator, compute_flows
    from keyframe_propagation.pipelines.propagate import PropagationConfig, propagate_fill, telea_fill

    clip = _clip(frames=10)
    frames = clip.frames.clone()
    frames[5] = clip.truth[5]
    cfg = PropagationConfig(chunk=5, lookahead=4, mask_dilation=1)
    filled, unseen = propagate_fill(frames, clip.masks, edited=[5], config=cfg)
    fs = compute_flows(clip.frames, FlowEstimator("dis", "medium"), masks=clip.masks)
    cfg2 = PropagationConfig(chunk=4, lookahead=3, flow_fill="idw", hole_consistency=2.0)
    filled2, unseen2 = propagate_fill(clip.frames, clip.masks, flows=fs, config=cfg2)
    return {
        "filled": filled,
        "unseen": unseen,
        "filled_flowset": filled2,
        "unseen_flowset": unseen2,
        "telea": telea_fill(clip.frames[0], clip.masks[0], 3),
    }


def _two_stream_inputs(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    h, w = 48, 64
    img = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 10:30, 20:44] = 1
    keys = torch.rand(1, 2, 3, h, w, generator=g)
    kmask = torch.zeros(1, 2, 1, h, w)
    kmask[:, 1, :, 5:15, 5:25] = 1
    flows = torch.randn(1, 2, 2, h, w, generator=g) * 3
    errs = torch.rand(1, 2, 1, h, w, generator=g)
    return img, mask, keys, kmask, flows, errs


@case()
def two_stream_forward(tmp: Path) -> dict[str, torch.Tensor]:
    """The tiny two-stream generator: forward with keyframes and flows, inpaint, front and rear."""
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

    torch.manual_seed(0)
    model = TwoStreamGenerator("tiny").eval()
    img, mask, keys, kmask, flows, errs = _two_stream_inputs()
    target = torch.cat((img * (1 - mask), mask), dim=1)
    key_in = torch.cat((keys * (1 - kmask), kmask), dim=2)
    with torch.no_grad():
        pred = model(target, key_in, flows=flows, flow_errors=errs)
        odd = model(target[..., :45, :61], None)
        feats = model.front(img, mask)
        rear = model.rear(feats)
    inp = model.inpaint(img, mask, keys, kmask, flows, errs)
    return {"pred": pred, "odd": odd, "lif": feats[0], "rear": rear, "inpaint": inp}


@case()
def two_stream_video(tmp: Path) -> dict[str, torch.Tensor]:
    """The video protocol: generated frames every 5, model flows, propagation in between."""
    from keyframe_propagation.pipelines.flow import FlowEstimator
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator
    from keyframe_propagation.pipelines.two_stream.video import (
        TwoStreamVideoConfig,
        model_flows,
        remove_with_model,
    )

    torch.manual_seed(0)
    model = TwoStreamGenerator("tiny").eval()
    clip = _clip(frames=11, seed=4)
    cfg = TwoStreamVideoConfig(generate_every=5, keyframe_offsets=(-5, 5, 10), work_long_side=40)
    filled, unseen = remove_with_model(clip.frames, clip.masks, model, edited=[], config=cfg)
    f, e = model_flows(
        clip.frames[3], clip.frames[[0, 8]], clip.masks[3],
        FlowEstimator("dis", "medium", work_size=(32, 32)), (32, 32), seed=3,
    )  # fmt: skip
    return {"filled": filled, "unseen": unseen, "model_flows": f, "model_errors": e}


def _lama():
    from keyframe_propagation.pipelines.refine.lama import LamaConfig
    from keyframe_propagation.pipelines.testing.lama import random_lama

    return random_lama(LamaConfig(ngf=8, n_blocks=2), seed=1)


def _refine_sample(h: int = 96, w: int = 128):
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=g), size=(h, w), mode="bicubic")
    image = (image.clamp(0, 1) + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 30:70, 40:90] = 1
    mask[..., 45:52, 20:40] = 1
    return image, mask


@case()
def lama(tmp: Path) -> dict[str, torch.Tensor]:
    """A small LaMa with Big-LaMa's layout: forward, front (local, global), rear, inpaint."""
    model = _lama()
    image, mask = _refine_sample(48, 64)
    with torch.no_grad():
        out = model(torch.cat([image * (1 - mask), mask], dim=1))
        z_l, z_g = model.front(image, mask)
        rear = model.rear((z_l, z_g))
    inp = model.inpaint(image[..., :45, :61], mask[..., :45, :61])
    return {"forward": out, "front_local": z_l, "front_global": z_g, "rear": rear, "inpaint": inp}


@case(tol=1e-4)
def refinement(tmp: Path) -> dict[str, torch.Tensor]:
    """Multiscale refinement: the reference schedule on two levels, crop + early stop, a frame batch."""
    from keyframe_propagation.pipelines.refine.multiscale import (
        RefineConfig,
        multiscale_refine,
        refine_frames,
    )

    model = _lama()
    image, mask = _refine_sample()
    ref = multiscale_refine(model, image, mask, RefineConfig(n_iters=4, min_side=48))
    fast = multiscale_refine(
        model, image, mask,
        RefineConfig(
            n_iters=5, min_side=48, crop=True, crop_margin=16, early_stop=True, patience=1, lr=0.006
        ),
    )  # fmt: skip
    ckpt = multiscale_refine(model, image, mask, RefineConfig(n_iters=3, min_side=48, checkpoint_segments=3))
    frames = refine_frames(
        model, image.permute(0, 2, 3, 1)[:, :80], mask[:, 0, :80], RefineConfig(n_iters=2, min_side=40)
    )
    return {
        "reference": ref.image,
        "reference_losses": torch.tensor([v for ls in ref.losses for v in ls]),
        "fast": fast.image,
        "fast_losses": torch.tensor([v for ls in fast.losses for v in ls]),
        "checkpointed": ckpt.image,
        "frames": frames,
    }


def _svd_model(tmp: Path):
    from keyframe_propagation.pipelines.svd.loading import load_svd
    from keyframe_propagation.pipelines.testing.svd import build_svd_folder, random_reverse_delta

    folder = build_svd_folder(tmp / "svd", seed=0, perturb=0.02)
    model = load_svd(folder, "fp32")
    model.set_reverse_delta(random_reverse_delta(model, 0.2), source="random")
    return model


@case(tol=1e-4)
def svd_sampler(tmp: Path) -> dict[str, torch.Tensor]:
    """Dual-directional sampling on a tiny SVD: fused and reference mode, weighted fusion, decoding."""
    from keyframe_propagation.pipelines.svd.sampler import InbetweenSettings, inbetween, sample_latents

    model = _svd_model(tmp)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(64, 64, 3, generator=g), torch.rand(64, 64, 3, generator=g)
    base = dict(num_frames=4, steps=2, seed=3, noise_injection_ratio=0.5, noise_injection_steps=1)
    fused = sample_latents(model, a, b, InbetweenSettings(**base, mode="fused"))
    ref = sample_latents(model, a, b, InbetweenSettings(**base, mode="reference"))
    weighted = inbetween(
        model, a, b, InbetweenSettings(**base, fusion="weighted", decode_chunk_size=3, max_guidance=2.0)
    )
    forward = sample_latents(
        model, a, None, InbetweenSettings(num_frames=4, steps=2, seed=1, branches="forward")
    )
    return {
        "fused": fused,
        "reference": ref,
        "weighted_latents": weighted.latents,
        "weighted_frames": weighted.frames,
        "forward": forward,
    }


# --------------------------------------------------------------------------------------------------
# Test and recorder
# --------------------------------------------------------------------------------------------------


def _run(name: str, tmp: Path) -> dict[str, torch.Tensor]:
    fn, _ = CASES[name]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = fn(tmp)
    finally:
        torch.set_num_threads(n)
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_equal_the_recorded_ones(name: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = GOLDEN / f"{name}.safetensors"
    assert path.is_file(), f"no golden file {path}; record with python tests/test_golden.py --record"
    expected = load_file(str(path))
    got = _run(name, tmp_path)
    assert sorted(got) == sorted(expected)
    tol = CASES[name][1]
    for key, ref in expected.items():
        scale = max(float(ref.abs().max()), 1.0) if ref.numel() else 1.0
        assert got[key].shape == ref.shape, key
        torch.testing.assert_close(got[key], ref, atol=tol * scale, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def record(names: list[str]) -> None:
    import tempfile

    from safetensors.torch import save_file

    GOLDEN.mkdir(exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = _run(name, Path(tmp))
        save_file(out, str(GOLDEN / f"{name}.safetensors"))
        size = sum(v.numel() * 4 for v in out.values()) / 1024
        print(f"recorded {name}: {len(out)} tensors, {size:.0f} KiB")


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: python tests/test_golden.py --record [CASE ...]")
    chosen = [a for a in sys.argv[1:] if not a.startswith("--")]
    record(chosen or list(CASES))
