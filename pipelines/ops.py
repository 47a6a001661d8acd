"""Small array operations shared by the methods: sizes, masks, padding and warping.

Conventions (see ``types.py``): images ``(N, C, H, W)`` or ``(H, W, C)`` in [0, 1]; masks 1 = hole;
flows ``(N, 2, H, W)`` in pixels, channel 0 = x, with backward-warping semantics.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------


def round_to_multiple(x: float, multiple: int) -> int:
    """``x`` rounded to the nearest multiple of ``multiple`` (halves up), at least ``multiple``."""
    return max(multiple, int(math.floor(x / multiple + 0.5)) * multiple)


def fit_size(h: int, w: int, width: int = 0, height: int = 0, multiple: int = 8) -> tuple[int, int]:
    """The ``(height, width)`` a resize to ``width`` x ``height`` gives for an ``h`` x ``w`` image.

    0 for one side keeps the aspect ratio (that side rounded to the nearest multiple of ``multiple``);
    both 0 keeps ``(h, w)``. Sides given are returned as they are (callers check their multiples).
    """
    if width == 0 and height == 0:
        return int(h), int(w)
    if height == 0:
        return round_to_multiple(h * width / w, multiple), int(width)
    if width == 0:
        return int(height), round_to_multiple(w * height / h, multiple)
    return int(height), int(width)


# --------------------------------------------------------------------------------------------------
# Masks and images
# --------------------------------------------------------------------------------------------------


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``(H, W)`` mask (> 0.5 = hole) grown by ``radius`` pixels (elliptical kernel); float32 0/1.

    OpenCV's dilation: kornia's shift-and-max is ~50x slower for kernels of this size on CPU.
    """
    m = (mask > 0.5).float()
    if radius <= 0 or not bool(m.any()):
        return m
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    out = cv2.dilate(m.cpu().numpy().astype(np.uint8), k)
    return torch.from_numpy(out).to(device=mask.device, dtype=torch.float32)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., H, W)`` mask (> 0 = hole) -> ``(..., h, w)`` bool, conservatively: an output pixel is a
    hole if it touches any hole (area averaging then > 0 where a side shrinks, nearest neighbour when
    both grow). Plain nearest-neighbour downscaling can drop thin holes entirely; this cannot."""
    h, w = int(size[0]), int(size[1])
    flat = mask.detach().reshape(-1, *mask.shape[-2:]).to("cpu", torch.float32).numpy()
    if tuple(flat.shape[-2:]) == (h, w):
        return torch.from_numpy(flat > 0).reshape(*mask.shape[:-2], h, w)
    shrink = h < flat.shape[-2] or w < flat.shape[-1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_NEAREST
    out = np.stack([cv2.resize(m, (w, h), interpolation=interp) > 0 for m in flat])
    return torch.from_numpy(out).reshape(*mask.shape[:-2], h, w)


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` float32 -> ``size`` (h, w): area averaging to shrink, bicubic to enlarge, clamped."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h <= image.shape[0] and w <= image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).reshape(h, w, *image.shape[2:])


# --------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------


def pad_bottom_right(x: torch.Tensor, ph: int, pw: int, mode: str = "reflect") -> torch.Tensor:
    """Pad ``(N, C, H, W)`` by ``ph`` rows at the bottom and ``pw`` columns at the right.

    Reflection needs a pad smaller than the side: where it is not, the border is replicated instead.
    """
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def pad_to_modulo(x: torch.Tensor, modulo: int) -> torch.Tensor:
    """Reflection-pad ``(N, C, H, W)`` at the bottom/right to multiples of ``modulo``."""
    h, w = x.shape[-2:]
    return pad_bottom_right(x, (-h) % modulo, (-w) % modulo)


# --------------------------------------------------------------------------------------------------
# Flow
# --------------------------------------------------------------------------------------------------


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize flows to ``size = (H, W)`` and scale their magnitudes to the new pixel units.

    flow: ``(N, 2, h, w)``. Returns ``(N, 2, H, W)``: bilinear (align_corners=True), x scaled by W/w
    and y by H/h. Returned unchanged (same tensor) when the size already matches.
    """
    h, w = int(flow.shape[-2]), int(flow.shape[-1])
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return flow
    out = F.interpolate(flow.float(), size=(H, W), mode="bilinear", align_corners=True)
    scale = torch.tensor([W / w, H / h], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * scale


def warp(
    image: torch.Tensor,
    flow: torch.Tensor,
    padding_mode: str = "zeros",
    box: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Backward warp: ``out(p) = image(p + flow(p))``, bilinear, align_corners=True.

    image: ``(N, C, H, W)``; flow: ``(N, 2, H, W)`` in pixels (or N = 1 to broadcast); a flow of
    another size is resized to the image's first (:func:`resize_flow`, as the two-stream reference's
    ``resized_flow_sample`` does for feature maps). Returns ``(N, C, H, W)`` in float32 (sampling in
    half precision loses sub-pixel accuracy). padding_mode: as ``grid_sample``.

    box ``(y0, y1, x0, x1)``: only the output pixels of that region, with ``flow`` given for the
    region (``(N, 2, y1 - y0, x1 - x0)``); each output pixel is computed exactly as without a box.
    """
    from .checks import check_shape

    check_shape(image, "N,C,H,W", "warp: image")
    check_shape(flow, "N,2,H,W", "warp: flow")
    H, W = int(image.shape[-2]), int(image.shape[-1])
    y0, y1, x0, x1 = box if box is not None else (0, H, 0, W)
    flow = flow.to(device=image.device, dtype=torch.float32)
    if box is None:
        flow = resize_flow(flow, (H, W))
    elif tuple(flow.shape[-2:]) != (y1 - y0, x1 - x0):
        raise ValueError(f"warp: flow {tuple(flow.shape)} does not cover the box {box}")
    if flow.shape[0] != image.shape[0]:
        flow = flow.expand(image.shape[0], -1, -1, -1)
    ys, xs = torch.meshgrid(
        torch.arange(y0, y1, dtype=torch.float32, device=image.device),
        torch.arange(x0, x1, dtype=torch.float32, device=image.device),
        indexing="ij",
    )
    # grid_sample wants (N, h, w, 2) in [-1, 1]; with align_corners=True pixel 0 -> -1, W-1 -> +1.
    gx = (xs + flow[:, 0]) * (2.0 / max(W - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def hole_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, y1, x0, x1)`` of the pixels > 0.5 of an ``(H, W)`` mask; None if there are none."""
    rows = torch.nonzero((mask > 0.5).any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero((mask > 0.5).any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def smooth_fill(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """``image (C, H, W)`` with the pixels where ``hole (H, W)`` > 0.5 replaced by a smooth fill from
    the known pixels around them (push-pull: a mask-weighted image pyramid, averaged down and blended
    back up bilinearly). Known pixels are unchanged bit for bit; a hole without known pixels becomes 0.

    Why: a hole filled with a constant (or the object still in it) has sharp edges that move with the
    hole, and a flow estimator follows them; the smooth fill continues the colours at the hole's edge,
    so there is almost no edge left to follow.
    """
    known = (hole <= 0.5).to(image.dtype)[None]
    if bool(known.all()):
        return image
    colour, weight = [image * known], [known]
    while min(colour[-1].shape[-2:]) > 1:
        # Down: mean colour of each block's known pixels (premultiplied by the share known).
        colour.append(F.avg_pool2d(colour[-1][None], 2, ceil_mode=True)[0])
        weight.append(F.avg_pool2d(weight[-1][None], 2, ceil_mode=True)[0])
    est = colour[-1] / weight[-1].clamp_min(1e-8)
    for c, w in zip(reversed(colour[:-1]), reversed(weight[:-1])):
        # Up: a block's own known colour where it has some, the coarser estimate for the rest.
        up = F.interpolate(est[None], size=c.shape[-2:], mode="bilinear", align_corners=False)[0]
        est = c + (1.0 - w) * up
    return torch.where(known > 0.5, image, est)


__all__ = [
    "dilate",
    "fit_size",
    "hole_box",
    "pad_bottom_right",
    "pad_to_modulo",
    "resize_flow",
    "resize_frame",
    "resize_mask",
    "round_to_multiple",
    "smooth_fill",
    "warp",
]


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
_TRIM: list = []  # [glibc's malloc_trim, or None where there is none], looked up once


def release_freed_memory() -> None:
    """Give the memory freed since the last call back to the operating system (glibc
    ``malloc_trim``; nothing elsewhere). Numbers are unchanged: only free memory is returned.

    Why: glibc serves the allocations of a frame's work (tens of MB at 1080p) from its heap once
    large blocks have been freed, and keeps the freed pages. Streaming a 1080p clip then held
    ~1.5 GiB more resident memory than it used; trimming after each flow pair and each written frame
    brings the resident size back to what is in use for a few ms per call.
    """
    if not _TRIM:
        import ctypes
        import ctypes.util

        trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = getattr(libc, "malloc_trim", None)
        except OSError:
            pass
        if trim is not None:
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        _TRIM.append(trim)
    if _TRIM[0] is not None:
        _TRIM[0](0)
