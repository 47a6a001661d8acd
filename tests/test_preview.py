"""Previews for the editor (pipelines.preview): bounded sizes, mask tint, flow picture, filmstrip store."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from keyframe_propagation.pipelines import preview as pv
from keyframe_propagation.pipelines.flow import flow_to_color


def _decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img[..., ::-1]  # RGB


@pytest.mark.parametrize("n, k", [(1, 5), (5, 5), (6, 5), (70, 12), (1000, 400)])
def test_sample_indices_spread_and_bounded(n, k):
    idx = pv.sample_indices(n, k)
    assert len(idx) == min(n, k) and idx == sorted(set(idx))
    assert idx[0] == 0 and idx[-1] == n - 1
    if n > k:  # evenly spread: gaps differ by at most one
        gaps = np.diff(idx)
        assert gaps.max() - gaps.min() <= 1


def test_fit_size_never_upscales_and_keeps_aspect():
    assert pv.fit_within(240, 432, 384) == (214, 384)
    assert pv.fit_within(100, 100, 384) == (100, 100)
    h, w = pv.fit_within(2160, 3840, 512, 288)
    assert w <= 512 and h <= 288 and abs(w / h - 3840 / 2160) < 0.02


def test_overlay_tints_only_the_hole():
    frames = torch.full((2, 8, 8, 3), 0.5)
    masks = torch.zeros(2, 8, 8)
    masks[:, 2:4, 2:4] = 1
    out = pv.overlay_mask(frames, masks, alpha=0.5)
    assert torch.equal(out[masks < 0.5], frames[masks < 0.5])
    expected = 0.5 * 0.5 + 0.5 * torch.tensor(pv.HOLE_COLOUR)
    assert torch.allclose(out[0, 2, 2], expected)


def test_animation_is_bounded_for_long_large_clips():
    # 300 frames of 960x540 (views of a few distinct frames: the bound is on the output, not the input).
    frames = torch.rand(1, 540, 960, 3).expand(300, -1, -1, -1)
    idx, anim = pv.animation(
        frames, torch.zeros(1, 540, 960).expand(300, -1, -1), max_frames=48, max_width=512
    )
    assert len(idx) == 48 and anim.shape == (48, 288, 512, 3)
    assert float(anim.min()) >= 0 and float(anim.max()) <= 1


def test_flow_preview_matches_the_colour_wheel_and_occlusion():
    # A uniform analytic flow: every pixel moves (+3, -1); the frame's right half is occluded.
    flow = torch.zeros(4, 2, 32, 64)
    flow[:, 0], flow[:, 1] = 3.0, -1.0
    occ = torch.zeros(4, 32, 64)
    occ[:, :, 32:] = 1
    idx, pic = pv.flow_preview(flow, occ, max_width=132, gap=4)
    assert idx == [0, 1, 2, 3] and pic.shape == (4, 32, 132, 3)
    colour, sep, right = pic[:, :, :64], pic[:, :, 64:68], pic[:, :, 68:]
    # Downscaling is 1:1 here: the colour is flow_to_color's at full saturation.
    expected = flow_to_color(flow[:1], max_magnitude=float(flow[0, :, 0, 0].norm()))[0, 0, 0]
    assert torch.allclose(colour[0, 5, 5], expected, atol=1e-5)
    assert torch.allclose(sep, torch.full_like(sep, 0.2))
    assert float(right[:, :, :32].max()) == 0.0 and float(right[:, :, 32:].min()) == 1.0


def test_flow_preview_scales_vectors_with_the_picture():
    # Halving the size halves the vectors, so the colour (direction + relative magnitude) is unchanged.
    flow = torch.zeros(1, 2, 64, 128)
    flow[:, 0] = torch.linspace(0, 8, 128)
    occ = torch.zeros(1, 64, 128)
    _, full = pv.flow_preview(flow, occ, max_width=260, gap=4)
    _, half = pv.flow_preview(flow, occ, max_width=132, gap=4)
    assert full.shape[2] == 260 and half.shape[2] == 132
    assert torch.allclose(full[0, 10, 120], half[0, 5, 60], atol=0.05)


def test_filmstrip_pictures_show_the_frame_with_the_hole_tinted():
    frames = torch.zeros(10, 120, 200, 3)
    frames[..., 1] = torch.linspace(0, 1, 10)[:, None, None]  # green grows with the frame index
    masks = torch.zeros(10, 120, 200)
    masks[:, 40:80, 60:140] = 1
    strip = pv.make_filmstrip(frames, masks, [0, 9, 9], source="clip", max_width=100)
    assert strip.frames == list(range(10)) and strip.keyframes == [0, 9]
    assert strip.size == (60, 100) and len(strip.jpegs) == 10
    last = _decode(strip.jpegs[9]).astype(int)
    assert last.shape == (60, 100, 3)
    assert abs(last[5, 5, 1] - 255) <= 6 and last[5, 5, 0] <= 6  # known pixel: the frame
    tint = (1 - 0.5) * np.array([0, 255, 0]) + 0.5 * 255 * np.array(pv.HOLE_COLOUR)
    assert np.abs(last[30, 50] - tint).max() <= 8  # hole: tinted
    meta = strip.meta()
    assert meta["num_frames"] == 10 and meta["width"] == 100 and meta["height"] == 60


def test_filmstrip_of_a_long_clip_is_bounded():
    frames = torch.rand(1000, 36, 64, 3)
    strip = pv.make_filmstrip(frames, None, [0], max_frames=400)
    assert len(strip.jpegs) == 400 and strip.frames[-1] == 999
    assert strip.nbytes < 400 * 8000


def _strip(n_bytes: int, frames: int = 4) -> pv.Filmstrip:
    return pv.Filmstrip(frames, [0], (8, 8), list(range(frames)), [b"x" * (n_bytes // frames)] * frames)


def test_store_drops_least_recently_used_runs_within_its_bounds():
    store = pv.FilmstripStore(max_runs=3, max_bytes=10_000)
    a, b, c = _strip(1000), _strip(1000), _strip(1000)
    for s in (a, b, c):
        store.put(s)
    assert store.get(a.run) is a  # a is now the most recent
    d = _strip(1000)
    store.put(d)
    assert store.get(b.run) is None and len(store) == 3
    big = _strip(9000)
    store.put(big)  # over the byte bound: older runs go, the new one stays
    assert store.get(big.run) is big and store.nbytes <= 10_000
    huge = _strip(50_000)
    store.put(huge)  # a single run larger than the bound is still kept (the last one)
    assert len(store) == 1 and store.get(huge.run) is huge


def test_store_replaces_a_nodes_previous_run_and_finds_the_nearest_picture():
    store = pv.FilmstripStore()
    first = pv.Filmstrip(100, [0], (8, 8), [0, 50, 99], [b"a", b"b", b"c"])
    store.put(first, owner="1")
    second = pv.Filmstrip(100, [0], (8, 8), [0, 50, 99], [b"d", b"e", b"f"])
    store.put(second, owner="1")
    assert store.get(first.run) is None and len(store) == 1
    assert store.picture(second.run, 60) == b"e" and store.picture(second.run, 90) == b"f"
    assert store.picture("unknown", 0) is None


def test_filmstrip_of_large_frames_holds_one_at_a_time_and_checks_cancel(monkeypatch):
    """Large frames are shrunk one at a time (Load Keyframes on a 4K clip peaked at 7.6 GB with 32 at
    once), giving the pictures of the whole batch shrunk at once; progress (Cancel) after each frame."""
    T, H, W = 12, 1200, 1600
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(H // 8, W // 8, 3, generator=gen)
    frames = [base.roll(t, 1).repeat_interleave(8, 0).repeat_interleave(8, 1) for t in range(T)]
    masks = [torch.zeros(H, W) for _ in range(T)]
    held: list[int] = []
    take = pv._take
    monkeypatch.setattr(pv, "_take", lambda seq, idx: held.append(len(idx)) or take(seq, idx))
    calls: list[tuple[int, int]] = []
    strip = pv.make_filmstrip(frames, masks, [0], "test", progress=lambda d, n, s: calls.append((d, n)))
    assert max(held) == 1 and sum(held) == 2 * T  # frames and masks
    assert calls == [(k + 1, T) for k in range(T)]
    size = pv.fit_within(H, W, 384, 288)
    at_once = pv.overlay_mask(
        pv.shrink(torch.stack(frames), size).clamp(0, 1),
        pv._masks_at(torch.stack(masks), list(range(T)), size),
    )
    assert strip.jpegs == [pv.encode_jpeg(f, 80) for f in at_once]  # the same pictures

    class Cancelled(Exception):
        pass

    def cancel(done, total, text):
        if done == 3:
            raise Cancelled

    held.clear()
    with pytest.raises(Cancelled):
        pv.make_filmstrip(frames, masks, [0], "test", progress=cancel)
    assert sum(held) == 2 * 3
