"""Training data for the two-stream model: synthetic keyframes and masks made from single images.

Each example is made from one image, as the reference's data pipeline: a shared crop and colour jitter,
then per frame (the target, frame 0, and each keyframe) a random perspective (scale up to 0.06), an
affine transform (scale 0.7-1.3, rotation +-40 degrees, shear +-0.1 degrees as imgaug), an optical
distortion and a random crop, with a slight colour jitter; each frame gets its own LaMa-style mask
(irregular strokes or boxes, sizes scaled with the crop).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ...clip import list_images
from ...errors import PipelineError


def random_irregular_mask(
    rng: np.random.Generator, h: int, w: int, max_angle: int = 4, max_len: int = 200, max_width: int = 100,
    min_times: int = 1, max_times: int = 5,
) -> np.ndarray:  # fmt: skip
    """LaMa's irregular strokes: ``times`` polylines of 1-5 segments with random angle, length and
    brush width. Returns ``(h, w)`` float32 in {0, 1}."""
    mask = np.zeros((h, w), np.float32)
    for i in range(int(rng.integers(min_times, max_times + 1))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(max_angle))
            if i % 2 == 0:
                angle = 2 * 3.1415926 - angle
            length = 10 + int(rng.integers(max(max_len, 1)))
            brush = 5 + int(rng.integers(max(max_width, 1)))
            ex = int(np.clip(x + length * np.sin(angle), 0, w))
            ey = int(np.clip(y + length * np.cos(angle), 0, h))
            cv2.line(mask, (x, y), (ex, ey), 1.0, brush)
            x, y = ex, ey
    return mask


def random_box_mask(
    rng: np.random.Generator, h: int, w: int, margin: int = 10, min_size: int = 30, max_size: int = 150,
    min_times: int = 1, max_times: int = 4,
) -> np.ndarray:  # fmt: skip
    """LaMa's boxes: 1-4 rectangles of side ``min_size``-``max_size`` kept ``margin`` from the border.
    Returns ``(h, w)`` float32 in {0, 1}."""
    mask = np.zeros((h, w), np.float32)
    max_size = max(min(max_size, h - 2 * margin, w - 2 * margin), min_size + 1)
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        bw, bh = int(rng.integers(min_size, max_size)), int(rng.integers(min_size, max_size))
        x = int(rng.integers(margin, max(w - margin - bw + 1, margin + 1)))
        y = int(rng.integers(margin, max(h - margin - bh + 1, margin + 1)))
        mask[y : y + bh, x : x + bw] = 1
    return mask


def _mixed_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of the two kinds with equal probability (the reference's irregular_proba = box_proba = 1),
    sizes scaled from the reference's 256 x 256 crops."""
    f = size / 256.0
    if rng.random() < 0.5:
        return random_irregular_mask(
            rng, size, size, max_len=max(1, round(200 * f)), max_width=max(1, round(100 * f))
        )
    return random_box_mask(
        rng, size, size, margin=round(10 * f), min_size=max(1, round(30 * f)), max_size=max(2, round(150 * f))
    )


def _colour_jitter(rng: np.random.Generator, img: np.ndarray, bc: float, hue: int, sat: int, val: int,
                   clahe: bool) -> np.ndarray:  # fmt: skip
    """Albumentations' CLAHE, RandomBrightnessContrast and HueSaturationValue (each p = 0.5) on uint8 RGB."""
    if clahe and rng.random() < 0.5:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        op = cv2.createCLAHE(clipLimit=float(rng.uniform(1, 4)), tileGridSize=(8, 8))
        lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if rng.random() < 0.5:
        alpha, beta = 1 + rng.uniform(-bc, bc), rng.uniform(-bc, bc) * 255
        img = np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-hue, hue + 1))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-sat, sat + 1)), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + int(rng.integers(-val, val + 1)), 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return img


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        img = cv2.copyMakeBorder(img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
    return img


def _random_crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    img = _pad_to(img, size)
    h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y : y + size, x : x + size]


def _perspective(rng: np.random.Generator, img: np.ndarray, max_scale: float) -> np.ndarray:
    """imgaug's PerspectiveTransform: corners moved by N(0, s) x size, s ~ U(0, max_scale)."""
    h, w = img.shape[:2]
    s = rng.uniform(0, max_scale)
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = src + rng.normal(0, s, (4, 2)).astype(np.float32) * np.float32([w, h])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _affine(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Scale 0.7-1.3, rotation +-40 degrees, shear +-0.1 degrees about the centre, reflected border."""
    h, w = img.shape[:2]
    scale, rot = rng.uniform(0.7, 1.3), math.radians(rng.uniform(-40, 40))
    shear = math.tan(math.radians(rng.uniform(-0.1, 0.1)))
    c, s = math.cos(rot), math.sin(rot)
    a = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) * scale
    centre = np.array([w / 2, h / 2])
    m = np.hstack([a, (centre - a @ centre)[:, None]]).astype(np.float32)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _optical_distortion(rng: np.random.Generator, img: np.ndarray, limit: float = 0.05) -> np.ndarray:
    """Albumentations' OpticalDistortion: radial distortion k ~ U(-limit, limit), centre shifted."""
    h, w = img.shape[:2]
    k = rng.uniform(-limit, limit)
    dx, dy = round(rng.uniform(-limit, limit) * w), round(rng.uniform(-limit, limit) * h)
    cam = np.array([[w, 0, w * 0.5 + dx], [0, h, h * 0.5 + dy], [0, 0, 1]], dtype=np.float32)
    dist = np.array([k, k, 0, 0, 0], dtype=np.float32)
    mx, my = cv2.initUndistortRectifyMap(cam, dist, None, None, (w, h), cv2.CV_32FC1)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


class SyntheticKeyframes:
    """Training examples from a folder of images: a target and ``n_keyframes`` keyframes per image.

    ``example(rng)`` -> dict of float32 tensors: ``image (3, S, S)``, ``mask (1, S, S)``, ``keys
    (T, 3, S, S)``, ``key_masks (T, 1, S, S)``. Images smaller than the crop are reflect-padded.
    """

    def __init__(self, folder: str | os.PathLike, size: int = 256, n_keyframes: int = 2) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise PipelineError(f"images: folder '{folder}' not found")
        self.paths = list_images(folder)
        if not self.paths:
            raise PipelineError(f"images: no image files in '{folder}'")
        if size < 16 or size % 8:
            raise PipelineError(f"size: the crop must be a multiple of 8 and >= 16, got {size}")
        self.size, self.n_keyframes = int(size), int(n_keyframes)
        self.max_shift = max(1, round(200 * size / 256))  # the reference's 200 px at 256

    def _read(self, path: Path) -> np.ndarray:
        data = np.fromfile(str(path), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if img is None:
            raise PipelineError(f"images: cannot read '{path}' (corrupt or not an image)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _individual(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            img = _perspective(rng, img, 0.06)
        if rng.random() < 0.5:
            img = _affine(rng, img)
        img = _pad_to(img, self.size)
        if rng.random() < 0.5:
            img = _optical_distortion(rng, img)
        img = _random_crop(rng, img, self.size)
        return _colour_jitter(rng, img, 0.01, 0, 3, 1, clahe=False)

    def example(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        img = self._read(self.paths[int(rng.integers(len(self.paths)))])
        # Shared by all frames of the example: crop with room for the per-frame motion, flip, colour.
        shared = _random_crop(rng, img, self.size + self.max_shift)
        if rng.random() < 0.5:
            shared = shared[:, ::-1]
        shared = _colour_jitter(rng, np.ascontiguousarray(shared), 0.2, 5, 30, 5, clahe=True)
        frames = [self._individual(rng, shared) for _ in range(self.n_keyframes + 1)]
        masks = [_mixed_mask(rng, self.size) for _ in frames]
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
        m = torch.from_numpy(np.stack(masks))[:, None]
        return {"image": x[0], "mask": m[0], "keys": x[1:], "key_masks": m[1:]}

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        items = [self.example(rng) for _ in range(batch_size)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
