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
    """frames (T,H,W,3) with the object; truth (T,H,W,3) without it; masks (T,H,W) 1 = object.

    layer: (T,H,W) 1 where a moving object that is part of the scene is (:func:`crossing_clip`), else
    None.
    """

    frames: torch.Tensor
    truth: torch.Tensor
    masks: torch.Tensor
    layer: torch.Tensor | None = None


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


CROSSING_COLOUR = (0.05, 0.9, 0.1)


def crossing_clip(
    num_frames: int = 40,
    height: int = 96,
    width: int = 160,
    pan: float = 1.5,
    object_speed: float = 4.0,
    hole: tuple[float, float, float, float] = (0.3, 0.75, 0.35, 0.6),
    seed: int = 0,
) -> SyntheticClip:
    """A moving object of the scene crosses under a static hole while the camera pans.

    The hole (a box, as fractions ``(y0, y1, x0, x1)`` of the frame: a logo to remove) hides the
    background and, while the object passes, part of the object. The object (a textured green disk,
    colours near :data:`CROSSING_COLOUR`, none of them in the scene) moves right at ``object_speed``
    pixels per frame against the background's ``pan``, so chains that follow the background's motion
    through the hole land on it in other frames: a fill that copies it leaves ghost copies.
    ``frames`` = ``truth`` = the scene with the object; ``masks`` = the hole; ``layer`` = where the
    object is in each frame.
    """
    rng = np.random.default_rng(seed)
    margin = int(abs(pan) * num_frames) + 8
    scene = _texture(height + 16, width + margin + 16, rng)
    # Keep the texture away from the object's colour, so its copies can be told apart.
    scene[..., 1] = np.minimum(scene[..., 1], 0.6)
    r = max(3, height // 8)
    pattern = cv2.resize(
        rng.random((5, 5)).astype(np.float32), (2 * r + 1, 2 * r + 1), interpolation=cv2.INTER_CUBIC
    )
    pattern = np.clip(pattern, 0, 1)
    y0, y1 = int(hole[0] * height), int(hole[1] * height)
    x0, x1 = int(hole[2] * width), int(hole[3] * width)
    frames, layers = [], []
    for t in range(num_frames):
        m = np.float32([[1, 0, -8 - pan * t], [0, 1, -8]])
        fr = cv2.warpAffine(scene, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        cx = int(round(-r + object_speed * t))
        cy = (y0 + y1) // 2
        obj = np.zeros((height, width), np.uint8)
        cv2.circle(obj, (cx, cy), r, 255, -1)
        # Textured like a real object (a pattern that moves with it), so its motion can be told.
        ys, xs = np.nonzero(obj)
        shade = pattern[ys - cy + r, xs - cx + r]
        fr[ys, xs] = np.float32(CROSSING_COLOUR) + shade[:, None] * np.float32([0.2, -0.25, 0.2])
        frames.append(fr)
        layers.append((obj > 0).astype(np.float32))
    hole_mask = np.zeros((num_frames, height, width), np.float32)
    hole_mask[:, y0:y1, x0:x1] = 1.0
    clip = torch.from_numpy(np.stack(frames))
    return SyntheticClip(
        frames=clip,
        truth=clip.clone(),
        masks=torch.from_numpy(hole_mask),
        layer=torch.from_numpy(np.stack(layers)),
    )


def moving_box_clip(
    num_frames: int = 12, height: int = 96, width: int = 160, speed: int = 5, seed: int = 0
) -> SyntheticClip:
    """A static scene (no camera motion) under a greyed box (36x40 px) moving right ``speed`` px/frame.

    ``frames`` have the box grey (0.5), as the removal bench's inputs; every background pixel shows in
    some frame and the true flow is zero, so flow that follows the moving box is what goes wrong.
    """
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 2.0)
    bg = torch.from_numpy((bg - bg.min()) / (bg.max() - bg.min()))
    truth = bg.expand(num_frames, height, width, 3).clone()
    masks = torch.zeros(num_frames, height, width)
    y0, x0 = height * 5 // 16, width // 8
    for t in range(num_frames):
        masks[t, y0 : y0 + 36, x0 + speed * t : x0 + speed * t + 40] = 1
    return SyntheticClip(torch.where(masks[..., None] > 0.5, 0.5, truth), truth, masks)


def object_copies(
    out: torch.Tensor, clip: SyntheticClip, tol: float = 0.25, min_pixels: int = 4
) -> list[int]:
    """Ghost copies of :func:`crossing_clip`'s object in ``out`` (T,H,W,3), per frame: connected regions
    (of at least ``min_pixels``) showing the object's colours that do not touch the object where it
    is (its layer grown by 2 pixels). The object itself, or a fill that continues it, is not a copy."""
    colour = torch.tensor(CROSSING_COLOUR)
    like = ((out - colour).abs().amax(-1) < tol).numpy().astype(np.uint8)
    grow = np.ones((5, 5), np.uint8)
    counts = []
    for t in range(out.shape[0]):
        near = cv2.dilate((clip.layer[t].numpy() > 0.5).astype(np.uint8), grow) > 0
        n, labels, stats, _ = cv2.connectedComponentsWithStats(like[t], connectivity=8)
        counts.append(
            sum(
                1
                for i in range(1, n)
                if stats[i, cv2.CC_STAT_AREA] >= min_pixels and not near[labels == i].any()
            )
        )
    return counts


def psnr_in_mask(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the masked pixels of a whole clip. pred/truth (T,H,W,3), mask (T,H,W)."""
    m = (mask > 0.5)[..., None].expand_as(pred)
    if not m.any():
        return float("inf")
    mse = ((pred - truth)[m] ** 2).mean().item()
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))
