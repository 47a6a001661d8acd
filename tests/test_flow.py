"""Tests of pipelines/flow.py: estimation against analytic motion, warping, consistency, filling."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_cancel_during_a_blocked_estimate

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.flow import (
    FlowEstimator,
    compute_flows,
    fb_error,
    fill_flow_in_mask,
    flow_pair,
    flow_to_color,
)
from keyframe_propagation.pipelines.ops import resize_flow, warp

H, W = 96, 128
MARGIN = 16  # interior margin: borders have no correspondence under translation/rotation


def texture(h: int, w: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture ``(h, w, 3)`` float32 spanning [0, 1] (well-defined flow)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    img -= img.min(axis=(0, 1))
    img /= img.max(axis=(0, 1))
    return img


def shifted_clip(n: int, dx: int, dy: int, seed: int = 0) -> torch.Tensor:
    """``(n, H, W, 3)`` frames whose content moves by (+dx, +dy) per frame (crops of a big texture)."""
    pad = 8 * n + 8
    big = texture(H + 2 * pad, W + 2 * pad, seed)
    frames = [big[pad - t * dy : pad - t * dy + H, pad - t * dx : pad - t * dx + W] for t in range(n)]
    return torch.from_numpy(np.stack(frames))


def interior(x: torch.Tensor) -> torch.Tensor:
    return x[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


def epe(flow: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Endpoint error ``(..., H, W)`` between ``(..., 2, H, W)`` flows."""
    return (flow - ref).norm(dim=-3)


def const_flow(n: int, fx: float, fy: float, h: int = H, w: int = W) -> torch.Tensor:
    return torch.tensor([fx, fy], dtype=torch.float32).view(1, 2, 1, 1).expand(n, 2, h, w).clone()


# ------------------------------------------------------------------------------------------------
# DIS estimation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_recovers_translation(preset: str) -> None:
    dx, dy = 3, -2
    clip = shifted_clip(2, dx, dy)
    est = FlowEstimator("dis", preset=preset)
    assert est.name == f"dis-{preset}"
    flow = est(clip[:1], clip[1:])
    assert flow.shape == (1, 2, H, W) and flow.dtype == torch.float32
    err = interior(epe(flow, const_flow(1, dx, dy)))
    assert err.median() < 0.5
    # And the reverse direction is the opposite motion.
    back = est(clip[1:], clip[:1])
    assert interior(epe(back, const_flow(1, -dx, -dy))).median() < 0.5


def test_dis_recovers_small_rotation() -> None:
    a = texture(H, W, seed=3)
    centre = (W / 2 - 0.5, H / 2 - 0.5)
    M = cv2.getRotationMatrix2D(centre, 2.0, 1.0)
    b = cv2.warpAffine(a, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # warpAffine maps source p to M p in b, so b(M p) = a(p): the flow a -> b is M p - p.
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    fx = M[0, 0] * xs + M[0, 1] * ys + M[0, 2] - xs
    fy = M[1, 0] * xs + M[1, 1] * ys + M[1, 2] - ys
    ref = torch.from_numpy(np.stack([fx, fy])[None]).float()
    assert ref.abs().max() > 2  # the motion is not trivially small
    flow = FlowEstimator("dis", preset="medium")(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert interior(epe(flow, ref)).median() < 1.0


def test_work_size_estimates_at_lower_resolution() -> None:
    dx, dy = 4, 2
    clip = shifted_clip(2, dx, dy)
    est = FlowEstimator("dis", preset="medium", work_size=(H // 2, W // 2))
    flow = est(clip[:1], clip[1:])
    assert flow.shape == (1, 2, H, W)
    err = interior(epe(flow, const_flow(1, dx, dy)))
    assert err.median() < 1.0
    # The magnitude really was scaled back up (half-size flow would be ~(2, 1)).
    assert abs(float(interior(flow[:, 0]).median()) - dx) < 1.0


def test_bad_preset_and_backend_raise() -> None:
    with pytest.raises(PipelineError, match="preset"):
        FlowEstimator("dis", preset="slow")
    with pytest.raises(PipelineError, match="backend"):
        FlowEstimator("farneback")
    with pytest.raises(PipelineError, match="frames"):
        FlowEstimator("dis")(torch.zeros(1, H, W, 3), torch.zeros(2, H, W, 3))


# ------------------------------------------------------------------------------------------------
# warp / resize_flow / fb_error
# ------------------------------------------------------------------------------------------------


def test_warp_with_integer_flow_is_a_shift() -> None:
    img = torch.from_numpy(texture(H, W, seed=1)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    dx, dy = 5, -3
    out = warp(img, const_flow(1, dx, dy))
    # out(y, x) = img(y + dy, x + dx)
    expected = torch.roll(img, shifts=(-dy, -dx), dims=(2, 3))
    assert torch.allclose(interior(out), interior(expected), atol=1e-5)
    # Outside the image with zero padding -> 0 (the last dx columns sample beyond the right edge).
    assert out[..., -dx + 1 :].abs().max() == 0
    assert out.dtype == torch.float32 and out.shape == img.shape
    # Half precision input is still sampled in float32.
    assert warp(img.half(), const_flow(1, dx, dy)).dtype == torch.float32


def test_warp_subpixel_is_bilinear() -> None:
    img = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(1, 1, H, W)  # value = x
    out = warp(img, const_flow(1, 0.25, 0.0))
    assert torch.allclose(out[..., : W - 1], img[..., : W - 1] + 0.25, atol=1e-4)


def test_resize_flow_scales_magnitudes() -> None:
    flow = const_flow(2, 3.0, -2.0, 32, 48)
    out = resize_flow(flow, (64, 96))
    assert out.shape == (2, 2, 64, 96)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 6.0))
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], -4.0))
    # Anisotropic: only y changes.
    out = resize_flow(flow, (16, 48))
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 3.0))
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], -1.0))
    assert resize_flow(flow, (32, 48)) is flow


def test_fb_error_translation_is_zero() -> None:
    f_ab = const_flow(1, 2.0, 1.0)
    f_ba = const_flow(1, -2.0, -1.0)
    err = fb_error(f_ab, f_ba)
    assert err.shape == (1, H, W)
    assert interior(err).max() < 1e-4
    # Inconsistent flows (both +d) give |2d| averaged over x, y = (4 + 2) / 2.
    bad = fb_error(f_ab, f_ab)
    assert torch.allclose(interior(bad), torch.full_like(interior(bad), 3.0), atol=1e-4)


def test_fb_error_flags_occluded_strip() -> None:
    # Static background, a foreground square x in [40, 60) moving right by 8 px. In frame a the strip
    # x in [60, 68) of the square's rows is background that the square covers in frame b (occluded).
    x0, x1, y0, y1, d = 40, 60, 30, 60, 8
    f_ab = torch.zeros(1, 2, H, W)
    f_ab[:, 0, y0:y1, x0:x1] = d
    f_ba = torch.zeros(1, 2, H, W)
    f_ba[:, 0, y0:y1, x0 + d : x1 + d] = -d
    err = fb_error(f_ab, f_ba)[0]
    strip = err[y0:y1, x1 : x1 + d]
    assert strip.min() > 3.5  # |0 + (-8)| / 2 = 4
    rest = err.clone()
    rest[y0:y1, x1 : x1 + d] = 0
    assert rest.max() < 1e-4
    # The reverse direction: the strip uncovered in b (x in [40, 48)) is occluded in a.
    err_ba = fb_error(f_ba, f_ab)[0]
    assert err_ba[y0:y1, x0 : x0 + d].min() > 3.5
    err_ba[y0:y1, x0 : x0 + d] = 0
    assert err_ba.max() < 1e-4


# ------------------------------------------------------------------------------------------------
# fill_flow_in_mask
# ------------------------------------------------------------------------------------------------


def square_mask(n: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(n, H, W)
    m[:, y0:y1, x0:x1] = 1
    return m


def test_fill_constant_flow() -> None:
    flow = const_flow(1, 2.5, -1.5)
    mask = square_mask(1, 30, 60, 40, 80)
    flow[:, :, 30:60, 40:80] = 100.0  # garbage inside the hole
    out = fill_flow_in_mask(flow, mask)
    assert torch.allclose(out, const_flow(1, 2.5, -1.5), atol=1e-4)


def test_fill_linear_flow_and_outside_unchanged() -> None:
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    truth = torch.stack([0.05 * xs + 1.0, -0.03 * ys + 0.5])[None]
    flow = truth.clone()
    flow[:, :, 40:50, 50:60] = -50.0
    mask = square_mask(1, 40, 50, 50, 60)
    out = fill_flow_in_mask(flow, mask, n_samples=20, power=6.0, seed=0)
    hole = mask[0] > 0.5
    err = (out[0][:, hole] - truth[0][:, hole]).abs()
    # The field varies by 0.5 px across the hole; IDW of nearby boundary samples stays close.
    assert err.max() < 0.25 and err.mean() < 0.08
    assert torch.equal(out[0][:, ~hole], flow[0][:, ~hole])  # bit for bit outside
    assert not torch.equal(out, flow)
    # Deterministic for a seed, different samples for another seed.
    assert torch.equal(out, fill_flow_in_mask(flow, mask, seed=0))
    assert not torch.equal(out, fill_flow_in_mask(flow, mask, seed=1))


def test_fill_empty_full_and_batched_masks() -> None:
    flow = torch.randn(3, 2, H, W)
    masks = torch.zeros(3, H, W)
    masks[1, 10:20, 10:20] = 1
    masks[2] = 1
    out = fill_flow_in_mask(flow, masks)
    assert torch.equal(out[0], flow[0])  # empty mask: no-op
    assert not torch.equal(out[1], flow[1])
    assert torch.equal(out[1][:, masks[1] < 0.5], flow[1][:, masks[1] < 0.5])
    assert torch.equal(out[2], torch.zeros_like(flow[2]))  # nothing known: zero flow
    assert torch.equal(fill_flow_in_mask(flow, torch.zeros(3, H, W)), flow)
    assert torch.equal(flow, flow.clone())  # input not modified in place
    with pytest.raises(PipelineError, match="mask"):
        fill_flow_in_mask(flow, torch.zeros(2, H, W))


def test_fill_hole_near_border_uses_few_samples() -> None:
    # A hole in the corner has a short boundary (fewer pixels than n_samples): still works.
    flow = const_flow(1, 1.0, 2.0)
    mask = square_mask(1, 0, 2, 0, 2)
    flow[:, :, :2, :2] = 9.0
    out = fill_flow_in_mask(flow, mask, n_samples=20)
    assert torch.allclose(out, const_flow(1, 1.0, 2.0), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# flow_to_color
# ------------------------------------------------------------------------------------------------


def _reference_colorwheel() -> np.ndarray:
    """Port of the widely used flow_vis / RAFT ``make_colorwheel`` (oracle)."""
    RY, YG, GC, CB, BM, MR = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((RY + YG + GC + CB + BM + MR, 3))
    col = 0
    wheel[0:RY, 0] = 255
    wheel[0:RY, 1] = np.floor(255 * np.arange(0, RY) / RY)
    col += RY
    wheel[col : col + YG, 0] = 255 - np.floor(255 * np.arange(0, YG) / YG)
    wheel[col : col + YG, 1] = 255
    col += YG
    wheel[col : col + GC, 1] = 255
    wheel[col : col + GC, 2] = np.floor(255 * np.arange(0, GC) / GC)
    col += GC
    wheel[col : col + CB, 1] = 255 - np.floor(255 * np.arange(CB) / CB)
    wheel[col : col + CB, 2] = 255
    col += CB
    wheel[col : col + BM, 2] = 255
    wheel[col : col + BM, 0] = np.floor(255 * np.arange(0, BM) / BM)
    col += BM
    wheel[col : col + MR, 2] = 255 - np.floor(255 * np.arange(MR) / MR)
    wheel[col : col + MR, 0] = 255
    return wheel


def _reference_flow_to_color(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """flow_vis ``flow_to_color`` without clipping, as float in [0, 1] (oracle)."""
    rad_max = np.sqrt(u**2 + v**2).max()
    u, v = u / (rad_max + 1e-5), v / (rad_max + 1e-5)
    wheel = _reference_colorwheel()
    ncols = wheel.shape[0]
    rad = np.sqrt(u**2 + v**2)
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = fk - k0
    out = np.zeros(u.shape + (3,))
    for i in range(3):
        col = (1 - f) * wheel[k0, i] / 255.0 + f * wheel[k1, i] / 255.0
        idx = rad <= 1
        col[idx] = 1 - rad[idx] * (1 - col[idx])
        col[~idx] *= 0.75
        out[..., i] = col
    return out


def test_flow_to_color_basic_colours() -> None:
    zero = flow_to_color(torch.zeros(2, 2, 8, 12))
    assert zero.shape == (2, 8, 12, 3)
    assert torch.allclose(zero, torch.ones_like(zero))  # zero flow = white
    right = flow_to_color(const_flow(1, 5.0, 0.0, 8, 12), max_magnitude=5.0)
    r, g, b = right[0, 4, 6]
    assert r > 0.9 and g < 0.2 and b < 0.2  # +x = red
    left = flow_to_color(const_flow(1, -5.0, 0.0, 8, 12), max_magnitude=5.0)
    r, g, b = left[0, 4, 6]
    assert r < 0.2 and b > 0.9 and g > 0.7  # -x = cyan, the opposite hue
    half = flow_to_color(const_flow(1, 2.5, 0.0, 8, 12), max_magnitude=5.0)
    assert torch.allclose(half[0, 4, 6], torch.tensor([1.0, 0.5, 0.5]), atol=1e-3)  # half saturation


def test_flow_to_color_matches_reference() -> None:
    flow = torch.randn(1, 2, 24, 32) * 3
    ours = flow_to_color(flow)
    assert ours.min() >= 0 and ours.max() <= 1
    ref = _reference_flow_to_color(flow[0, 0].double().numpy(), flow[0, 1].double().numpy())
    assert np.allclose(ours[0].numpy(), ref, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# compute_flows / flow_pair
# ------------------------------------------------------------------------------------------------


def test_compute_flows_translating_clip() -> None:
    dx, dy = 2, 1
    clip = shifted_clip(5, dx, dy)
    calls: list[tuple[int, int]] = []
    fs = compute_flows(
        clip,
        FlowEstimator("dis", preset="medium"),
        keyframes=(0, 4),
        progress=lambda done, total, text: calls.append((done, total)),
    )
    T = 5
    assert fs.forward.shape == (T - 1, 2, H, W) and fs.backward.shape == (T - 1, 2, H, W)
    assert fs.fb_error_forward.shape == (T - 1, H, W) and fs.fb_error_backward.shape == (T - 1, H, W)
    assert fs.size == (H, W) and fs.method == "dis-medium" and not fs.filled and fs.num_frames == T
    assert interior(epe(fs.forward, const_flow(T - 1, dx, dy))).median() < 0.5
    assert interior(epe(fs.backward, const_flow(T - 1, -dx, -dy))).median() < 0.5
    assert interior(fs.fb_error_forward).median() < 0.3
    # Keyframe pairs: every frame with every other keyframe.
    expected_keys = {(t, k) for k in (0, 4) for t in range(T) if t != k}
    assert set(fs.keyframe) == expected_keys
    for (t, k), (f_tk, f_kt, e_tk) in fs.keyframe.items():
        assert f_tk.shape == (2, H, W) and f_kt.shape == (2, H, W) and e_tk.shape == (H, W)
        ref = const_flow(1, (k - t) * dx, (k - t) * dy)[0]
        assert interior(epe(f_tk, ref)).median() < 0.75, (t, k)
        assert interior(epe(f_kt, -ref)).median() < 0.75, (t, k)
    # Progress: one call per estimated pair: 4 consecutive + the non-adjacent unordered keyframe
    # pairs {0,2}, {0,3}, {0,4}, {1,4}, {2,4}; done counts up to total.
    total = (T - 1) + 5
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_compute_flows_cancel_stops_between_pairs() -> None:
    clip = shifted_clip(5, 1, 1)
    calls = []

    def cancel_on_second(done: int, total: int, text: str) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        compute_flows(clip, FlowEstimator("dis", preset="ultrafast"), progress=cancel_on_second)
    assert calls == [1, 2]


class IndexEncodingEstimator:
    """Fake estimator: frame t is the constant t/10; flow i -> j is (j - i) * (1, 0.5), except garbage
    (99) inside the source frame's mask, so the test can tell which mask was filled."""

    name = "fake"

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        for fa, fb in zip(a, b):
            i, j = round(float(fa[0, 0, 0]) * 10), round(float(fb[0, 0, 0]) * 10)
            f = const_flow(1, (j - i) * 1.0, (j - i) * 0.5, fa.shape[0], fa.shape[1])[0]
            f[:, self.masks[i] > 0.5] = 99.0
            out.append(f)
        return torch.stack(out)


def test_compute_flows_fills_source_mask_and_store_size() -> None:
    T = 4
    clip = torch.arange(T).float().view(T, 1, 1, 1).expand(T, H, W, 3) / 10
    masks = torch.zeros(T, H, W)
    for t in range(T):
        masks[t, 20 + 5 * t : 40 + 5 * t, 30 + 10 * t : 50 + 10 * t] = 1
    est = IndexEncodingEstimator(masks)

    raw = compute_flows(clip, est, masks=masks, fill_masks=False)
    assert not raw.filled and raw.forward.max() > 50

    fs = compute_flows(clip, est, masks=masks, keyframes=(3,), store_size=(H // 2, W // 2))
    assert fs.filled and fs.size == (H, W) and fs.method == "fake"
    assert fs.forward.shape == (T - 1, 2, H // 2, W // 2)
    assert fs.fb_error_forward.shape == (T - 1, H // 2, W // 2)
    # Stored in pixels of the stored size: (1, 0.5) -> (0.5, 0.25).
    assert torch.allclose(fs.forward, const_flow(T - 1, 0.5, 0.25, H // 2, W // 2), atol=1e-4)
    assert torch.allclose(fs.backward, const_flow(T - 1, -0.5, -0.25, H // 2, W // 2), atol=1e-4)
    # Errors computed after filling: consistent inside the frame (the model sees no fake occlusion);
    # only pixels that leave the frame (last row/column) count as occluded.
    assert fs.fb_error_forward[:, :-2, :-2].max() < 1e-3 and fs.fb_error_backward[:, 2:, 2:].max() < 1e-3
    assert fs.fb_error_forward[:, -1, -1].min() > 0.1
    for t in range(T - 1):
        fwd, bwd, ef, eb = flow_pair(fs, t)
        assert fwd.shape == (2, H, W) and ef.shape == (H, W)
        assert torch.allclose(fwd, const_flow(1, 1.0, 0.5)[0], atol=1e-4)
        assert torch.allclose(bwd, const_flow(1, -1.0, -0.5)[0], atol=1e-4)
        assert interior(ef).max() < 1e-3 and interior(eb).max() < 1e-3
    assert set(fs.keyframe) == {(0, 3), (1, 3), (2, 3)}
    f03, f30, e03 = fs.keyframe[(0, 3)]
    assert torch.allclose(f03, const_flow(1, 1.5, 0.75, H // 2, W // 2)[0], atol=1e-4)
    assert torch.allclose(f30, const_flow(1, -1.5, -0.75, H // 2, W // 2)[0], atol=1e-4)
    assert e03.shape == (H // 2, W // 2) and e03[:-4, :-4].max() < 1e-3
    with pytest.raises(PipelineError, match="t"):
        flow_pair(fs, T - 1)


def test_flow_pair_scales_errors() -> None:
    clip = torch.arange(2).float().view(2, 1, 1, 1).expand(2, H, W, 3) / 10
    fs = compute_flows(clip, IndexEncodingEstimator(torch.zeros(2, H, W)))
    # Put a known error in and read it back at half size: scaled by the mean factor 0.5.
    fs.fb_error_forward[0] = 4.0
    _, _, ef, _ = flow_pair(fs, 0, size=(H // 2, W // 2))
    assert ef.shape == (H // 2, W // 2) and torch.allclose(ef, torch.full_like(ef, 2.0))


def test_compute_flows_input_errors() -> None:
    clip = shifted_clip(3, 1, 0)
    est = FlowEstimator("dis", preset="ultrafast")
    with pytest.raises(PipelineError, match="keyframes"):
        compute_flows(clip, est, keyframes=(5,))
    with pytest.raises(PipelineError, match="masks"):
        compute_flows(clip, est, masks=torch.zeros(2, H, W))
    with pytest.raises(PipelineError, match="frames"):
        compute_flows(clip[..., :2], est)


# ------------------------------------------------------------------------------------------------
# RAFT (torchvision), random weights: loading paths and shapes only
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raft_small_state() -> dict[str, torch.Tensor]:
    ofl = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    return ofl.raft_small(weights=None).state_dict()


def _raft_pair() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.from_numpy(texture(64, 96, seed=5))[None]
    b = torch.roll(a, shifts=(1, 2), dims=(1, 2))
    return a, b


def test_raft_from_pth(tmp_path, raft_small_state) -> None:
    path = tmp_path / "raft_small_test.pth"
    torch.save(raft_small_state, path)
    est = FlowEstimator("raft", raft_weights=str(path), raft_iters=2)
    assert est.name == "raft-small"
    a, b = _raft_pair()
    flow = est(a, b)
    assert flow.shape == (1, 2, 64, 96) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


def test_raft_from_safetensors_with_module_prefix(tmp_path, raft_small_state) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "raft_small_test.safetensors"
    safetensors_torch.save_file({f"module.{k}": v.contiguous() for k, v in raft_small_state.items()}, path)
    est = FlowEstimator("raft", raft_weights=str(path), raft_iters=2, work_size=(64, 64))
    a, b = _raft_pair()
    flow = est(a, b)
    assert flow.shape == (1, 2, 64, 96) and torch.isfinite(flow).all()


def test_raft_large_is_detected(tmp_path) -> None:
    ofl = pytest.importorskip("torchvision.models.optical_flow")
    path = tmp_path / "raft_large_test.pth"
    torch.save(ofl.raft_large(weights=None).state_dict(), path)
    assert FlowEstimator("raft", raft_weights=str(path)).name == "raft-large"


def test_raft_bad_weights(tmp_path) -> None:
    pytest.importorskip("torchvision.models.optical_flow")
    wrong = tmp_path / "not_raft_weights.pth"
    torch.save({"encoder.weight": torch.randn(4, 4), "head.bias": torch.randn(4)}, wrong)
    with pytest.raises(PipelineError, match="not_raft_weights.pth") as info:
        FlowEstimator("raft", raft_weights=str(wrong))
    assert "missing" in str(info.value) and "encoder.weight" in str(info.value)
    missing = tmp_path / "nowhere" / "raft_large.pth"
    with pytest.raises(PipelineError, match="nowhere") as info:
        FlowEstimator("raft", raft_weights=str(missing))
    assert "optical_flow" in str(info.value)  # says where to put the file
    with pytest.raises(PipelineError, match="raft_weights"):
        FlowEstimator("raft", raft_weights=None)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match="corrupt.pth"):
        FlowEstimator("raft", raft_weights=str(corrupt))


def test_rotation_reference_is_consistent_with_warp() -> None:
    # Sanity check of the analytic rotation field used above: warping b with it reproduces a.
    a = texture(H, W, seed=3)
    M = cv2.getRotationMatrix2D((W / 2 - 0.5, H / 2 - 0.5), 2.0, 1.0)
    b = cv2.warpAffine(a, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    ref = np.stack([M[0, 0] * xs + M[0, 1] * ys + M[0, 2] - xs, M[1, 0] * xs + M[1, 1] * ys + M[1, 2] - ys])
    back = warp(torch.from_numpy(b).permute(2, 0, 1)[None], torch.from_numpy(ref[None]).float())
    diff = interior(back[0] - torch.from_numpy(a).permute(2, 0, 1)).abs()
    assert diff.mean() < 0.02
    # Chord length of a 2 degree rotation at the corner's radius.
    radius = math.hypot(W / 2 - 0.5, H / 2 - 0.5)
    corner = float(np.hypot(ref[0, 0, 0], ref[1, 0, 0]))
    assert math.isclose(corner, 2 * radius * math.sin(math.radians(1.0)), rel_tol=1e-6)


def test_compute_flows_sees_cancel_during_one_long_estimate():
    """Cancel stops compute_flows while one estimate still runs: a 4K pair takes seconds."""
    frames = torch.rand(3, 16, 24, 3)
    assert_cancel_during_a_blocked_estimate(lambda est, prog: compute_flows(frames, est, progress=prog))
