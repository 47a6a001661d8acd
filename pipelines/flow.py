"""Optical flow for keyframe propagation: estimation (OpenCV DIS or torchvision RAFT), warping,
forward-backward consistency, hole filling and visualisation.

Conventions (see ``types.py``): flows are ``(N, 2, H, W)`` float32 in pixels, channel 0 = x (right),
channel 1 = y (down), with *backward-warping* semantics: ``flow_a_to_b(p)`` is the displacement such
that pixel ``p`` of frame a is found at ``p + flow`` in frame b, so ``warp(img_b, flow_a_to_b)`` is
frame b resampled onto frame a's grid. Clips are ``(T, H, W, 3)`` in [0, 1]; masks ``(T, H, W)`` with
1 = hole.

The two-stream model (SPEC A) was trained with RAFT flow computed at 256x256 and resized back with
magnitude scaling, flow inside the source frame's mask filled by inverse-distance weighting from 20
boundary samples (weights 1/d^6), and a 1-channel error ``|f_fw + warp(f_bw, f_fw)|`` averaged over x
and y. :func:`compute_flows` with ``FlowEstimator(work_size=(256, 256))`` reproduces that recipe.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from functools import partial

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checks import as_masks, check_shape
from .errors import PipelineError, wh
from .ops import dilate, resize_flow, warp
from .progress import ProgressFn, report, run_checked
from .types import FlowSet
from .weights import read_weights, state_dict_mismatch

__all__ = [
    "FlowEstimator",
    "complete_flow",
    "compute_flows",
    "fb_error",
    "fill_flow_in_mask",
    "flow_pair",
    "flow_to_color",
]

_DIS_PRESETS = {
    "ultrafast": cv2.DISOpticalFlow_PRESET_ULTRAFAST,
    "fast": cv2.DISOpticalFlow_PRESET_FAST,
    "medium": cv2.DISOpticalFlow_PRESET_MEDIUM,
}
_BACKENDS = ("dis", "raft")
# torchvision's RAFT builds a 4-level correlation pyramid on 1/8-resolution features and needs
# feature maps of at least 16 pixels per side, i.e. inputs of at least 128 pixels per side.
_RAFT_MIN_SIDE = 128
# OpenCV's DIS refuses images whose longer side is under 12 px.
_DIS_MIN_SIDE = 12
# Hole pixels processed at once by the IDW fill: bounds the (pixels x samples) distance matrix.
_FILL_CHUNK = 1 << 18
_WEIGHTS_HINT = (
    "put torchvision-format RAFT weights (e.g. torchvision's raft_large_C_T_SKHT_V2-ff5fadd5.pth or "
    "raft_small_C_T_V2-01064c6d.pth) in ComfyUI's models/optical_flow folder"
)


# ----------------------------------------------------------------------------------------------
# Consistency
# ----------------------------------------------------------------------------------------------


def _resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` images/maps to ``size`` (align_corners=True, as SPEC A)."""
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=True)


def fb_error(flow_ab: torch.Tensor, flow_ba: torch.Tensor) -> torch.Tensor:
    """Forward-backward consistency error (SPEC A), in pixels.

    flow_ab, flow_ba: ``(N, 2, H, W)``. Returns ``(N, H, W)``: ``|f_ab + warp(f_ba, f_ab)|`` averaged
    over the x and y components. Near 0 where the two flows agree, large where p is occluded in b.
    """
    # Zero padding as in the reference: a pixel that leaves the frame has no match in b, so it
    # counts as occluded (error = its own flow magnitude).
    back = warp(flow_ba, flow_ab)
    return (flow_ab.float() + back).abs().mean(dim=1)


# ----------------------------------------------------------------------------------------------
# Hole filling
# ----------------------------------------------------------------------------------------------


def _idw_fill_frame(
    flow: torch.Tensor, hole: torch.Tensor, n_samples: int, power: float, gen: torch.Generator
) -> torch.Tensor:
    """Fill one frame's flow ``(2, H, W)`` inside the bool ``hole (H, W)`` (not empty, not full)."""
    # Boundary = known pixels 8-adjacent to the hole (3x3 dilation of the hole minus the hole).
    dil = cv2.dilate(hole.cpu().numpy().astype(np.uint8), np.ones((3, 3), np.uint8))
    ring = torch.from_numpy(dil.astype(bool)).to(hole.device) & ~hole
    by, bx = torch.nonzero(ring, as_tuple=True)
    pick = torch.randperm(by.numel(), generator=gen)[: max(int(n_samples), 1)].to(hole.device)
    by, bx = by[pick], bx[pick]
    sample_xy = torch.stack((bx, by), dim=1).float()  # (S, 2)
    sample_flow = flow[:, by, bx].float().t()  # (S, 2)

    hy, hx = torch.nonzero(hole, as_tuple=True)
    out = flow.clone()
    for start in range(0, hy.numel(), _FILL_CHUNK):
        py, px = hy[start : start + _FILL_CHUNK], hx[start : start + _FILL_CHUNK]
        pts = torch.stack((px, py), dim=1).float()
        d = torch.cdist(pts, sample_xy)  # (P, S); > 0 since samples lie outside the hole
        # w = d^-power normalised, computed as a softmax of -power*log(d) so large powers and
        # distances neither overflow nor underflow.
        w = torch.softmax(-float(power) * torch.log(d.clamp_min(1e-6)), dim=1)
        out[:, py, px] = (w @ sample_flow).t().to(out.dtype)
    return out


def fill_flow_in_mask(
    flow: torch.Tensor,
    mask: torch.Tensor,
    n_samples: int = 20,
    power: float = 6.0,
    seed: int = 0,
) -> torch.Tensor:
    """Replace flow inside the hole by inverse-distance weighting from hole-boundary samples (SPEC A).

    flow: ``(N, 2, H, W)``; mask: ``(N, H, W)`` (or ``(1, H, W)`` for all frames; resized to the flow's
    size if it differs) with > 0.5 = hole. For each frame, ``n_samples`` random known pixels adjacent to
    the hole are drawn and each hole pixel gets ``sum_i w_i f_i / sum_i w_i`` with ``w_i = 1/d_i^power``.
    Deterministic for a given ``seed``. Frames with an empty mask are unchanged; a frame whose mask
    covers everything gets zero flow (no known pixel to interpolate from). Outside the hole the flow is
    unchanged bit for bit. Returns a new ``(N, 2, H, W)`` tensor.
    """
    check_shape(flow, "N,2,H,W", "flow")
    if n_samples < 1:
        raise PipelineError(f"n_samples must be at least 1, got {n_samples}")
    N, _, H, W = flow.shape
    holes = as_masks(mask.to(flow.device), N, (H, W), "mask", resize=True) > 0.5
    gen = torch.Generator().manual_seed(int(seed))
    out = flow.clone()
    for i in range(N):
        hole = holes[i]
        n_hole = int(hole.sum())
        if n_hole == 0:
            continue
        if n_hole == H * W:
            out[i] = 0
            continue
        out[i] = _idw_fill_frame(flow[i], hole, n_samples, power, gen)
    return out


def complete_flow(
    flow: torch.Tensor, hole: torch.Tensor, method: str = "homography", seed: int = 0, ring: int = 12
) -> torch.Tensor:
    """Replace the flow inside ``hole`` by a completion from the known flow around it.

    flow: (2,H,W); hole: (H,W) 1 = replace. "idw": inverse-distance weighting from boundary samples
    (SPEC A). "homography": a RANSAC homography fitted on a ring around the hole (camera motion,
    exact for rotation/zoom/pan of distant backgrounds) plus the IDW-completed residual, falling back
    to plain IDW when the fit is poor.
    """
    if not bool(hole.any()):
        return flow
    if method == "homography":
        H, W = hole.shape
        band = (dilate(hole, ring) > 0.5) & (hole < 0.5)
        ys, xs = torch.nonzero(band, as_tuple=True)
        if len(ys) >= 16:
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(ys), generator=g)[:3000]
            ys, xs = ys[pick], xs[pick]
            src = torch.stack([xs, ys], 1).float()
            dst = src + flow[:, ys, xs].T
            hm, inl = cv2.findHomography(src.numpy(), dst.numpy(), cv2.RANSAC, 1.0)
            if hm is not None and inl is not None and float(inl.mean()) > 0.5:
                gy, gx = torch.meshgrid(
                    torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
                )
                hmt = torch.from_numpy(hm)
                den = hmt[2, 0] * gx + hmt[2, 1] * gy + hmt[2, 2]
                px = (hmt[0, 0] * gx + hmt[0, 1] * gy + hmt[0, 2]) / den
                py = (hmt[1, 0] * gx + hmt[1, 1] * gy + hmt[1, 2]) / den
                fh = torch.stack([px - gx, py - gy]).to(flow.dtype)
                resid = fill_flow_in_mask((flow - fh)[None], hole[None], seed=seed)[0]
                return torch.where(hole[None] > 0.5, fh + resid, flow)
    return fill_flow_in_mask(flow[None], hole[None], seed=seed)[0]


# ----------------------------------------------------------------------------------------------
# Visualisation
# ----------------------------------------------------------------------------------------------


def _colorwheel() -> torch.Tensor:
    """The Middlebury colour wheel (Baker et al. 2007): 55 RGB colours in [0, 1], ``(55, 3)``."""
    # Segments (length, channel held at 255, channel that ramps, rising?):
    # RY: R full, G rises; YG: G full, R falls; GC: G full, B rises; CB: B full, G falls;
    # BM: B full, R rises; MR: R full, B falls.
    segments = ((15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True), (11, 2, 1, False),
                (13, 2, 0, True), (6, 0, 2, False))  # fmt: skip
    rows = []
    for n, full, ramp, rising in segments:
        seg = np.zeros((n, 3))
        steps = np.floor(255 * np.arange(n) / n)
        seg[:, full] = 255
        seg[:, ramp] = steps if rising else 255 - steps
        rows.append(seg)
    return torch.from_numpy(np.concatenate(rows) / 255.0).float()


def flow_to_color(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour-code flows with the Middlebury wheel: hue = direction, saturation = magnitude.

    flow: ``(N, 2, H, W)``. max_magnitude: magnitude shown fully saturated (default: the batch's
    maximum); larger magnitudes are darkened by 0.75 as in the reference code. Zero flow is white.
    Returns ``(N, H, W, 3)`` float in [0, 1] (RGB), ready for a ComfyUI IMAGE.
    """
    check_shape(flow, "N,2,H,W", "flow")
    u, v = flow[:, 0].float(), flow[:, 1].float()
    rad = torch.sqrt(u * u + v * v)
    norm = float(rad.max()) if max_magnitude is None else float(max_magnitude)
    eps = 1e-5
    u, v = u / (norm + eps), v / (norm + eps)
    rad = torch.sqrt(u * u + v * v)

    wheel = _colorwheel().to(flow.device)
    ncols = wheel.shape[0]
    a = torch.atan2(-v, -u) / math.pi  # in [-1, 1]; +x flow -> -1 -> first colour (red)
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = fk.floor().long().clamp(0, ncols - 1)
    k1 = (k0 + 1) % ncols
    f = (fk - k0.float())[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]  # (N, H, W, 3)
    r = rad[..., None]
    inside = r <= 1
    col = torch.where(inside, 1 - r * (1 - col), col * 0.75)
    return col.clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Estimation
# ----------------------------------------------------------------------------------------------


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    check_shape(a, "N,H,W,3", "frames")
    if a.shape != b.shape:
        raise PipelineError(f"frames: the two batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def _is_raft_small(sd: dict[str, torch.Tensor]) -> bool:
    """raft_small's encoders use bottleneck blocks (``convnormrelu3``) and 32 stem channels."""
    stem = sd.get("feature_encoder.convnormrelu.0.weight")
    if stem is not None:
        return int(stem.shape[0]) == 32
    return any(".convnormrelu3." in k for k in sd)


class FlowEstimator:
    """Optical flow a -> b for batches of frame pairs.

    backend "dis": OpenCV's DIS (CPU, no weights; preset "ultrafast", "fast" or "medium") on
    grayscale uint8. backend "raft": torchvision's RAFT (large or small, detected from the weights)
    loaded from ``raft_weights`` (.pth/.pt or .safetensors in torchvision's key format).
    work_size ``(h, w)``: estimate at that size and resize the flow back (SPEC A uses (256, 256)).
    """

    def __init__(
        self,
        backend: str = "dis",
        preset: str = "medium",
        work_size: tuple[int, int] | None = None,
        raft_weights: str | None = None,
        raft_iters: int = 20,
        device: str | torch.device = "cpu",
    ) -> None:
        if backend not in _BACKENDS:
            raise PipelineError(f"backend: unknown flow backend '{backend}'; choose one of {_BACKENDS}")
        if work_size is not None:
            if len(work_size) != 2 or min(int(work_size[0]), int(work_size[1])) < 8:
                raise PipelineError(f"work_size: expected (height, width) of at least 8, got {work_size}")
            work_size = (int(work_size[0]), int(work_size[1]))
        self.backend = backend
        self.preset = preset
        self.work_size = work_size
        self.raft_iters = int(raft_iters)
        self.device = torch.device(device)
        self._dis = None
        self._raft: torch.nn.Module | None = None
        self._variant = ""
        # One estimate at a time: after a Cancel, an estimate may still finish in a worker thread
        # (see progress.run_checked) while a new run already uses this estimator.
        self._lock = threading.Lock()
        if backend == "dis":
            if preset not in _DIS_PRESETS:
                raise PipelineError(
                    f"preset: unknown DIS preset '{preset}'; choose one of {tuple(_DIS_PRESETS)}"
                )
            self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
        else:
            if self.raft_iters < 1:
                raise PipelineError(f"raft_iters must be at least 1, got {raft_iters}")
            self._raft = self._build_raft(raft_weights)

    def _build_raft(self, raft_weights: str | None) -> torch.nn.Module:
        try:
            from torchvision.models.optical_flow import raft_large, raft_small
        except Exception as exc:  # ImportError, or a torchvision built for another torch
            raise PipelineError(f"install torchvision to use the RAFT backend ({exc})") from exc
        if raft_weights is None:
            raise PipelineError(f"raft_weights: no RAFT weights file given; {_WEIGHTS_HINT}")
        path = os.fspath(raft_weights)
        if not os.path.isfile(path):
            raise PipelineError(f"raft_weights: file not found: {path}; {_WEIGHTS_HINT}")
        sd = {k.removeprefix("module."): v for k, v in read_weights(path, "raft_weights")[0].items()}
        small = _is_raft_small(sd)
        self._variant = "small" if small else "large"
        model = (raft_small if small else raft_large)(weights=None, progress=False)
        parts = state_dict_mismatch(model.state_dict(), sd)
        if parts:
            raise PipelineError(
                f"raft_weights: '{os.path.basename(path)}' does not match torchvision's "
                f"raft_{self._variant}: "
                + "; ".join(parts)
                + ". Original princeton-vl RAFT checkpoints use other key names; "
                + _WEIGHTS_HINT
            )
        model.load_state_dict(sd)
        return model.eval().to(self.device)

    @property
    def name(self) -> str:
        """Short description, e.g. "dis-medium" or "raft-large"."""
        return f"dis-{self.preset}" if self.backend == "dis" else f"raft-{self._variant}"

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Flow a -> b for each pair. a, b: ``(N, H, W, 3)`` in [0, 1]. Returns ``(N, 2, H, W)``
        float32 at the input resolution, on ``a``'s device."""
        _check_pair(a, b)
        H, W = int(a.shape[1]), int(a.shape[2])
        size = self.work_size or (H, W)
        if self.backend == "dis" and max(size) < _DIS_MIN_SIDE:
            at = f" (the working size of {wh(size)})" if self.work_size else ""
            raise PipelineError(
                f"images: frames of {wh((H, W))}{at} are too small for DIS optical flow, which needs one "
                f"side of {_DIS_MIN_SIDE} px or more; use larger frames (or a larger work size)"
            )
        with self._lock:
            if self.backend == "dis":
                flow = self._dis_flow(a, b, size)
            else:
                x = _resize_images(torch.cat((a, b)).permute(0, 3, 1, 2).float(), size)  # (2N, 3, h, w)
                flow = self._raft_flow(*x.chunk(2))
        return resize_flow(flow, (H, W)).to(a.device)

    def _dis_flow(self, a: torch.Tensor, b: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """a, b: ``(N, H, W, 3)`` -> ``(N, 2, h, w)`` at the working ``size``. DIS works on 8-bit
        grayscale; one image is converted at a time (a 4K float frame is 100 MB)."""

        def gray(img: torch.Tensor) -> np.ndarray:
            img = _resize_images(img.permute(2, 0, 1)[None].float(), size)[0]
            u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            return cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)

        flows = []
        for i in range(a.shape[0]):
            # calc(I0, I1) returns f with I0(p) ~ I1(p + f(p)): exactly our a -> b convention.
            f = self._dis.calc(gray(a[i]), gray(b[i]), None)
            flows.append(torch.from_numpy(f).permute(2, 0, 1))
        return torch.stack(flows).float()

    def _raft_flow(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: ``(N, 3, h, w)`` in [0, 1] -> ``(N, 2, h, w)`` with RAFT."""
        h, w = int(a.shape[-2]), int(a.shape[-1])
        # RAFT needs >= 128 px per side: upscale tiny inputs (better than padding a mostly-replicated
        # border), then pad to a multiple of 8 with replicated borders and crop the flow back.
        s = max(1.0, _RAFT_MIN_SIDE / min(h, w))
        rh, rw = max(math.ceil(h * s), _RAFT_MIN_SIDE), max(math.ceil(w * s), _RAFT_MIN_SIDE)
        ph, pw = (-rh) % 8, (-rw) % 8
        with torch.inference_mode():
            x = torch.cat((a, b)).to(self.device) * 2 - 1  # RAFT expects RGB in [-1, 1]
            x = _resize_images(x, (rh, rw))
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            xa, xb = x.chunk(2)
            flow = self._raft(xa, xb, num_flow_updates=self.raft_iters)[-1]
            flow = flow[:, :, :rh, :rw].float()
            flow = resize_flow(flow, (h, w))
        return flow.cpu().clone()


# ----------------------------------------------------------------------------------------------
# Clip-level flow
# ----------------------------------------------------------------------------------------------


def _store(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, 2, H, W)`` -> ``(N, 2, h, w)`` on CPU, magnitudes in pixels of the stored size."""
    return resize_flow(flow.float(), size).cpu()


def _store_error(err: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` error -> ``(N, h, w)``, scaled by the mean of the two axis factors."""
    H, W = int(err.shape[-2]), int(err.shape[-1])
    if (H, W) == tuple(size):
        return err.float().cpu()
    factor = 0.5 * (size[1] / W + size[0] / H)
    return (_resize_images(err.float()[:, None], size)[:, 0] * factor).cpu()


def compute_flows(
    frames: torch.Tensor,
    estimator: FlowEstimator,
    masks: torch.Tensor | None = None,
    fill_masks: bool = True,
    keyframes: Sequence[int] = (),
    store_size: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> FlowSet:
    """Flow between consecutive frames (and between frames and keyframes) of a clip.

    frames: ``(T, H, W, 3)`` in [0, 1]. masks: ``(T, H, W)`` (or ``(1, H, W)`` for all frames), 1 =
    hole. With masks and ``fill_masks``, each flow is filled inside the mask of its *source* frame (the
    frame whose grid it lives on): t->t+1 in mask[t], t+1->t in mask[t+1]. Errors are computed after
    filling: ``fb_error_forward[t] = fb_error(fwd[t], bwd[t])`` and the reverse for backward.
    keyframes: for every frame t and keyframe k != t, ``keyframe[(t, k)] = (flow t->k, flow k->t,
    error t->k)``; each unordered pair is estimated once and neighbouring pairs reuse the consecutive
    flow. store_size ``(h, w)``: flows (and errors) are stored at that size in its pixel units (default
    frame size). Pairs are processed one at a time; ``progress(done, total, text)`` is called after
    each estimated pair, so an exception from it (Cancel) stops between pairs.
    """
    check_shape(frames, "T,H,W,3", "frames")
    T, H, W = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if T < 1:
        raise PipelineError("frames: the clip is empty")
    if store_size is None:
        store = (H, W)
    else:
        if len(store_size) != 2 or min(int(store_size[0]), int(store_size[1])) < 1:
            raise PipelineError(f"store_size: expected (height, width), got {store_size}")
        store = (int(store_size[0]), int(store_size[1]))
    holes = None if masks is None else as_masks(masks, T, (H, W), "masks").cpu()
    keys = sorted({int(k) for k in keyframes})
    bad = [k for k in keys if not 0 <= k < T]
    if bad:
        raise PipelineError(f"keyframes: indices {bad} are outside the clip's {T} frames (0..{T - 1})")
    do_fill = holes is not None and fill_masks

    def estimate(i: int, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flows i->j and j->i (filled) and their errors, at frame resolution, each ``(1, ...)``."""
        a, b = frames[[i, j]], frames[[j, i]]
        # One batch of 2 for RAFT; Cancel (progress raising) is seen while it runs, not only after.
        check = None if progress is None else (lambda: report(progress, done, total, f"flow {i} -> {j}"))
        pair = run_checked(partial(estimator, a, b), check).float().cpu()
        f_ij, f_ji = pair[:1], pair[1:]
        if do_fill:
            f_ij = fill_flow_in_mask(f_ij, holes[i : i + 1], seed=seed)
            f_ji = fill_flow_in_mask(f_ji, holes[j : j + 1], seed=seed)
        return f_ij, f_ji, fb_error(f_ij, f_ji), fb_error(f_ji, f_ij)

    # Unordered frame/keyframe pairs that are not consecutive (those reuse the consecutive flow).
    extra = sorted({(min(t, k), max(t, k)) for k in keys for t in range(T) if abs(t - k) > 1})
    total = (T - 1) + len(extra)
    done = 0

    n = max(T - 1, 0)
    fwd = torch.empty((n, 2, *store))
    bwd = torch.empty((n, 2, *store))
    err_f = torch.empty((n, *store))
    err_b = torch.empty((n, *store))
    pairs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for t in range(T - 1):
        f, b, ef, eb = estimate(t, t + 1)
        fwd[t], bwd[t] = _store(f, store)[0], _store(b, store)[0]
        err_f[t], err_b[t] = _store_error(ef, store)[0], _store_error(eb, store)[0]
        if keys and (t in keys or t + 1 in keys):
            pairs[(t, t + 1)] = (fwd[t], bwd[t], err_f[t], err_b[t])
        done += 1
        report(progress, done, total, f"flow {t} -> {t + 1}")
    for i, j in extra:
        f, b, ef, eb = estimate(i, j)
        pairs[(i, j)] = (
            _store(f, store)[0],
            _store(b, store)[0],
            _store_error(ef, store)[0],
            _store_error(eb, store)[0],
        )
        done += 1
        report(progress, done, total, f"flow {i} <-> keyframe pair {j}")

    keyframe: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for k in keys:
        for t in range(T):
            if t == k:
                continue
            lo, hi = min(t, k), max(t, k)
            f_lh, f_hl, e_lh, e_hl = pairs[(lo, hi)]
            keyframe[(t, k)] = (f_lh, f_hl, e_lh) if t < k else (f_hl, f_lh, e_hl)

    return FlowSet(
        forward=fwd,
        backward=bwd,
        fb_error_forward=err_f,
        fb_error_backward=err_b,
        size=(H, W),
        method=estimator.name,
        filled=bool(do_fill),
        keyframe=keyframe,
    )


def flow_pair(
    flowset: FlowSet, t: int, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flows of the pair (t, t+1) at ``size`` (default ``flowset.size``), magnitudes rescaled.

    Returns ``(fwd (2, H, W), bwd (2, H, W), err_fwd (H, W), err_bwd (H, W))``; errors are resized
    bilinearly and scaled by the mean of the x and y factors.
    """
    n = int(flowset.forward.shape[0])
    if not 0 <= int(t) < n:
        raise PipelineError(f"t: pair index {t} is outside 0..{n - 1} (the clip has {n + 1} frames)")
    size = tuple(flowset.size) if size is None else (int(size[0]), int(size[1]))
    fwd = resize_flow(flowset.forward[t : t + 1].float(), size)[0]
    bwd = resize_flow(flowset.backward[t : t + 1].float(), size)[0]
    ef = _store_error(flowset.fb_error_forward[t : t + 1], size)[0]
    eb = _store_error(flowset.fb_error_backward[t : t + 1], size)[0]
    return fwd, bwd, ef, eb
