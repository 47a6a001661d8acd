"""Synthetic clips with known ground truth: a textured scene, camera motion and a moving object.

Used by ``python -m keyframe_propagation demo``, the tests and the benchmarks: the background behind
the object is known, so the quality of a fill can be measured (PSNR inside the hole).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class SyntheticClip:
    """frames (T,H,W,3) with the object; truth (T,H,W,3) without it; masks (T,H,W) 1 = object."""

    frames: torch.Tensor
    truth: torch.Tensor
    masks: torch.Tensor


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth multi-scale texture with some sharp shapes: flow is well defined everywhere."""
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((64, 0.5), (16, 0.3), (4, 0.2)):
        small = rng.random((max(h // scale, 2), max(w // scale, 2), 3)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    for _ in range(max(4, (h * w) // 6000)):
        c = tuple(float(x) for x in rng.random(3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(3, max(4, min(h, w) // 12)))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, c, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), c, -1, lineType=cv2.LINE_AA)
    return np.clip(img, 0, 1)


def make_clip(
    num_frames: int = 24,
    height: int = 96,
    width: int = 160,
    pan: float = 2.0,
    object_size: float = 0.22,
    object_speed: float = 3.0,
    dilation: int = 2,
    seed: int = 0,
) -> SyntheticClip:
    """A camera panning right over a static scene while an object crosses the frame.

    pan: camera motion in pixels per frame (so the background behind the object is visible in other
    frames); object_size: object's radius as a fraction of the frame height; dilation: pixels the mask
    is grown by around the object.
    """
    rng = np.random.default_rng(seed)
    margin = int(abs(pan) * num_frames) + 8
    scene = _texture(height + 16, width + margin + 16, rng)
    frames, truth, masks = [], [], []
    r = max(3, int(object_size * height))
    colour = (0.95, 0.15, 0.1)
    for t in range(num_frames):
        x0 = 8 + pan * t
        m = np.float32([[1, 0, -x0], [0, 1, -8 + 2.0 * np.sin(t / 5.0)]])
        bg = cv2.warpAffine(scene, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        cx = int(width * 0.2 + object_speed * t) % width
        cy = int(height * 0.5 + height * 0.15 * np.sin(t / 4.0))
        obj = np.zeros((height, width), np.uint8)
        cv2.ellipse(obj, (cx, cy), (r, int(r * 0.8)), t * 5.0, 0, 360, 255, -1)
        fr = bg.copy()
        fr[obj > 0] = np.float32(colour)
        if dilation > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
            obj = cv2.dilate(obj, k)
        frames.append(fr)
        truth.append(bg)
        masks.append((obj > 0).astype(np.float32))
    return SyntheticClip(
        frames=torch.from_numpy(np.stack(frames)),
        truth=torch.from_numpy(np.stack(truth)),
        masks=torch.from_numpy(np.stack(masks)),
    )


def psnr_in_mask(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the masked pixels of a whole clip. pred/truth (T,H,W,3), mask (T,H,W)."""
    m = (mask > 0.5)[..., None].expand_as(pred)
    if not m.any():
        return float("inf")
    mse = ((pred - truth)[m] ** 2).mean().item()
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))
