"""Multiscale feature refinement for high-resolution inpainting (SPEC B; Geomagical's refiner on LaMa).

An inpainting network that works well at ~512 px makes blurry fills at 2K. The refinement runs it on
an image pyramid: the coarsest level is inpainted by one plain pass; at each finer level the network's
*front* features are optimised (Adam) so that its *rear* output (a) keeps the known pixels and
(b) inside the (eroded) hole, once downscaled, matches the previous level's result. The hole thus gets
the coarse level's global structure with the fine level's detail.

Any model with ``front(image, mask) -> features`` and a differentiable ``rear(features) -> image`` can be
refined (:class:`Refinable`): LaMa (:mod:`.lama`), and the two-stream model with its keyframes fixed.

Faithful to the reference by default (n_iters 15, lr 0.002, min_side 512, max_scales 3, px_budget
1.8 MP, modulo 8). Options beyond it, all off by default: activation checkpointing of the rear,
autocast (bf16/fp16, one optimiser step per iteration), crop mode (refine only the hole's bounding box
plus context at the finer levels) and early stopping on a loss plateau.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cv2
import kornia
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..checks import as_masks, check_finite_result, check_shape
from ..errors import PipelineError
from ..ops import pad_to_modulo
from ..progress import ProgressFn, report

__all__ = [
    "RefineConfig",
    "RefineResult",
    "Refinable",
    "budget_size",
    "build_pyramid",
    "downscale_image",
    "downscale_mask",
    "erode",
    "eroded_hole",
    "multiscale_refine",
    "n_scales_for",
    "paste_back",
    "pyramid_sizes",
    "refine_frames",
    "refinement_loss",
]

EPS = 1e-8
# The smallest side a pyramid level may have: LaMa's three stride-2 steps need 2 pixels left after
# padding to its modulo (8), so 9 px work; 16 is the documented limit.
MIN_IMAGE_SIDE = 16
AUTOCAST = ("none", "bf16", "fp16")


@runtime_checkable
class Refinable(Protocol):
    """A model the refinement can drive.

    ``front(image (B,3,H,W) in [0,1], mask (B,1,H,W) 1 = hole) -> tuple of feature tensors``
    (H, W multiples of the refinement's ``modulo``); ``rear(features) -> (B,3,H,W)`` in [0,1],
    differentiable in the features. Optionally ``rear_stages() -> list of callables`` chaining to
    ``rear`` (enables activation checkpointing).
    """

    def front(self, image: torch.Tensor, mask: torch.Tensor) -> Sequence[torch.Tensor]: ...

    def rear(self, features: Sequence[torch.Tensor]) -> torch.Tensor: ...


@dataclass
class RefineConfig:
    """Parameters of the refinement. Defaults = the reference (crop and early stopping off)."""

    n_iters: int = 15  # forward passes per refined level (n_iters - 1 optimiser steps); 0 = plain pass
    lr: float = 0.002
    min_side: int = 512
    max_scales: int = 3
    px_budget: int = 1_800_000
    modulo: int = 8
    checkpoint_segments: int = 0  # activation checkpointing of the rear (reference variant: 9); 0 = off
    autocast: str = "none"  # "none" | "bf16" | "fp16"
    crop: bool = False  # refine only the hole's bounding box + crop_margin at the finer levels
    crop_margin: int = 128  # context pixels around the hole's bounding box, at each refined level
    early_stop: bool = False  # stop a level when the loss stops improving
    patience: int = 2  # ... for this many iterations in a row
    min_improvement: float = 0.005  # ... by at least this fraction of the best loss so far

    def check(self) -> None:
        def bad(name: str, why: str) -> PipelineError:
            return PipelineError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.n_iters < 0:
            raise bad("n_iters", "must be >= 0")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.min_side < 1:
            raise bad("min_side", "must be >= 1")
        if self.max_scales < 1:
            raise bad("max_scales", "must be >= 1")
        if self.px_budget < 64 * 64:
            raise bad("px_budget", "must be at least 4096 pixels")
        if self.modulo < 1:
            raise bad("modulo", "must be >= 1")
        if self.checkpoint_segments < 0:
            raise bad("checkpoint_segments", "must be >= 0")
        if self.autocast not in AUTOCAST:
            raise bad("autocast", f"must be one of {AUTOCAST}")
        if self.crop_margin < 0:
            raise bad("crop_margin", "must be >= 0")
        if self.patience < 1:
            raise bad("patience", "must be >= 1")


@dataclass
class RefineResult:
    """image: (1, 3, h, w) float32, the refined image at the (pixel-budget) working size (h, w).

    sizes: (h, w) of each pyramid level, coarsest first; losses: per level, the loss of each forward
    pass (empty for plain passes); crops: per level, the refined box (y0, y1, x0, x1) or None = all.
    """

    image: torch.Tensor
    sizes: list[tuple[int, int]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    crops: list[tuple[int, int, int, int] | None] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Loss of the finest level's last pass (nan when nothing was optimised)."""
        for ls in reversed(self.losses):
            if ls:
                return ls[-1]
        return float("nan")


# --------------------------------------------------------------------------------------------------
# Pyramid
# --------------------------------------------------------------------------------------------------


def n_scales_for(h: int, w: int, min_side: int = 512, max_scales: int = 3) -> int:
    """1 + round(log2(min(h, w) / min_side)) (at least 1), capped at ``max_scales``.

    Python's round (half to even) as the reference, which uses ``int(round(np.float64))``.
    """
    return min(1 + int(round(max(0.0, math.log2(min(h, w) / min_side)))), max_scales)


def budget_size(h: int, w: int, px_budget: int) -> tuple[int, int]:
    """(h, w) scaled by sqrt(px_budget / (h * w)) (truncated) when over the budget, else unchanged."""
    if h * w <= px_budget:
        return h, w
    r = math.sqrt(px_budget / float(h * w))
    return int(h * r), int(w * r)


def pyramid_sizes(
    h: int, w: int, min_side: int = 512, max_scales: int = 3, px_budget: int = 1_800_000
) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels, coarsest first (before padding to the modulo)."""
    h, w = budget_size(h, w, px_budget)
    sizes = [(h, w)]
    for _ in range(n_scales_for(h, w, min_side, max_scales) - 1):
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes[::-1]


def _blur(x: torch.Tensor) -> torch.Tensor:
    return kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")


def downscale_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H//2, W//2): 5x5 Gaussian blur (sigma 1), bilinear (align_corners=False)."""
    return F.interpolate(
        _blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False
    )


def downscale_mask(m: torch.Tensor) -> torch.Tensor:
    """Conservative pyramid step of a (B, 1, H, W) mask: blur, bilinear half size, any value >= 1e-8 -> 1."""
    m = F.interpolate(
        _blur(m), size=(m.shape[-2] // 2, m.shape[-1] // 2), mode="bilinear", align_corners=False
    )
    return (m >= EPS).to(m.dtype)


def build_pyramid(
    image: torch.Tensor,
    mask: torch.Tensor,
    min_side: int = 512,
    max_scales: int = 3,
    px_budget: int = 1_800_000,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """image (1, 3, H, W), mask (1, 1, H, W) binary -> (images, masks), coarsest first, unpadded.

    Over the pixel budget both are first resized (bilinear, align_corners=False), the mask then made
    conservative (> 1e-8 -> 1).
    """
    h, w = image.shape[-2:]
    bh, bw = budget_size(h, w, px_budget)
    if (bh, bw) != (h, w):
        image = F.interpolate(image, size=(bh, bw), mode="bilinear", align_corners=False)
        mask = (F.interpolate(mask, size=(bh, bw), mode="bilinear", align_corners=False) > EPS).to(mask.dtype)
    images, masks = [image], [mask]
    for _ in range(n_scales_for(bh, bw, min_side, max_scales) - 1):
        images.append(downscale_image(images[-1]))
        masks.append(downscale_mask(masks[-1]))
    return images[::-1], masks[::-1]


_ELLIPSE: dict[int, torch.Tensor] = {}


def _ellipse(size: int) -> torch.Tensor:
    if size not in _ELLIPSE:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)).astype("float32")
        _ELLIPSE[size] = torch.from_numpy(k)
    return _ELLIPSE[size]


def erode(mask: torch.Tensor, size: int = 15) -> torch.Tensor:
    """Binary erosion of a (B, 1, H, W) 0/1 mask by a size x size ellipse, outside the image counting as
    inside the mask (kornia's "geodesic" border). Equal to ``kornia.morphology.erosion`` on binary
    masks, computed as one convolution (kornia's unfold engine needs H*W*size^2 memory)."""
    k = _ellipse(size).to(mask.device, mask.dtype)[None, None]
    outside = F.conv2d(1.0 - mask, k, padding=size // 2)
    return (outside < 0.5).to(mask.dtype)


def eroded_hole(mask: torch.Tensor, size: int = 15) -> torch.Tensor:
    """The second loss term's region: (B, 1, H, W) -> (B, 1, H//2, W//2): bilinear half size (no blur),
    pixels >= 1 - 1e-8 kept, eroded by a size x size ellipse."""
    m = F.interpolate(
        mask, size=(mask.shape[-2] // 2, mask.shape[-1] // 2), mode="bilinear", align_corners=False
    )
    return erode((m >= 1.0 - EPS).to(mask.dtype), size)


def refinement_loss(
    pred: torch.Tensor,
    image: torch.Tensor,
    known: torch.Tensor,
    ref_lower: torch.Tensor,
    hole_lower: torch.Tensor,
    orig_hw: tuple[int, int],
    known_scale: float = 1.0,
) -> torch.Tensor:
    """The two-term L1 loss of one refined level.

    pred, image (B, 3, Hp, Wp) padded; known (B, 1, Hp, Wp) 1 where mask < 1e-8 (padding included);
    ref_lower (B, 3, h//2, w//2) the previous level's result; hole_lower (B, 1, h//2, w//2) the eroded
    hole; orig_hw = (h, w) the unpadded size. Means over the selected pixels and channels; an empty
    region contributes 0 (the reference would give NaN). ``known_scale`` multiplies the first term
    (crop mode: the crop's share of the level's known pixels, see :func:`_refine`).
    """
    c = pred.shape[1]
    l_known = ((pred - image).abs() * known).sum() / (known.sum() * c).clamp_min(1)
    h, w = orig_hw
    down = downscale_image(pred[..., :h, :w])
    l_hole = ((down - ref_lower).abs() * hole_lower).sum() / (hole_lower.sum() * c).clamp_min(1)
    return known_scale * l_known + l_hole


# --------------------------------------------------------------------------------------------------
# One level
# --------------------------------------------------------------------------------------------------


def _rear_fn(model: Refinable, segments: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """model.rear, or the same chain with all but the last of ``segments`` parts checkpointed."""
    stages_of = getattr(model, "rear_stages", None)
    if segments <= 1 or stages_of is None:
        return lambda z: model.rear(z)
    stages = list(stages_of())
    n = min(segments, len(stages))
    bounds = [round(i * len(stages) / n) for i in range(n + 1)]
    parts = [stages[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def run_part(part: list[Callable], packed: bool, *xs: torch.Tensor):
        # Checkpointed functions take tensors as arguments: a tuple between stages is unpacked.
        x: object = tuple(xs) if packed else xs[0]
        for s in part:
            x = s(x)
        return x

    def rear(z: list[torch.Tensor]) -> torch.Tensor:
        x: object = tuple(z)
        for i, part in enumerate(parts):
            packed = isinstance(x, tuple)
            xs = x if packed else (x,)
            if i < len(parts) - 1:
                x = checkpoint(run_part, part, packed, *xs, use_reentrant=False)
            else:
                x = run_part(part, packed, *xs)
        assert isinstance(x, torch.Tensor)
        return x

    return rear


def _autocast(device: torch.device, mode: str):
    if mode == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _refine_level(
    model: Refinable,
    image: torch.Tensor,
    mask: torch.Tensor,
    ref_lower: torch.Tensor | None,
    cfg: RefineConfig,
    tick: Callable[[str], None],
    losses: list[float],
    known_scale: float = 1.0,
) -> torch.Tensor:
    """One level: image (1, 3, h, w), mask (1, 1, h, w) unpadded; ref_lower (1, 3, h//2, w//2) or None
    (plain pass); known_scale weighs the loss's known-pixel term. Returns the composite (1, 3, h, w)
    float32."""
    h, w = image.shape[-2:]
    ip = pad_to_modulo(image, cfg.modulo)
    mp = (pad_to_modulo(mask, cfg.modulo) >= EPS).to(image.dtype)
    with torch.no_grad(), _autocast(image.device, cfg.autocast):
        feats = model.front(ip, mp)
    if ref_lower is None or cfg.n_iters <= 1:
        # Plain pass: with n_iters == 1 the reference makes one forward and no optimiser step.
        with torch.no_grad(), _autocast(image.device, cfg.autocast):
            pred = model.rear(feats).float()
        if ref_lower is not None:
            losses.append(
                float(
                    refinement_loss(
                        pred, ip, (mp < EPS).float(), ref_lower, eroded_hole(mask), (h, w), known_scale
                    )
                )
            )
        tick(f"plain pass {w}x{h}")
    else:
        known = (mp < EPS).to(image.dtype)
        hole_lower = eroded_hole(mask)  # constant over the iterations (the reference recomputes it)
        ref_lower = ref_lower.detach()
        z = [f.detach().float().clone().requires_grad_(True) for f in feats]
        del feats
        opt = torch.optim.Adam(z, lr=cfg.lr)
        scaler = torch.amp.GradScaler(image.device.type) if cfg.autocast == "fp16" else None
        rear = _rear_fn(model, cfg.checkpoint_segments)
        best, stale = math.inf, 0
        for it in range(cfg.n_iters):
            opt.zero_grad(set_to_none=True)
            with _autocast(image.device, cfg.autocast):
                pred = rear(z)
            pred = pred.float()
            loss = refinement_loss(pred, ip, known, ref_lower, hole_lower, (h, w), known_scale)
            value = float(loss.detach())
            losses.append(value)
            tick(f"{w}x{h} iteration {it + 1}/{cfg.n_iters} loss {value:.5f}")
            if cfg.early_stop:
                stale = stale + 1 if value > best * (1.0 - cfg.min_improvement) else 0
                best = min(best, value)
            if it == cfg.n_iters - 1 or (cfg.early_stop and stale >= cfg.patience):
                break  # the last forward pass is the result: no step after it
            if scaler is not None:
                scaler.scale(loss).backward(inputs=z)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward(inputs=z)
                opt.step()
            del pred, loss
        pred = pred.detach()
    m3 = mp[..., :h, :w]
    return m3 * pred[..., :h, :w] + (1 - m3) * image


def _known_count(mask: torch.Tensor, modulo: int) -> float:
    """Known pixels (padding included) of a level as the loss counts them."""
    return max(float((pad_to_modulo(mask, modulo) < EPS).sum()), 1.0)


def _crop_box(mask: torch.Tensor, margin: int, modulo: int) -> tuple[int, int, int, int] | None:
    """Box (y0, y1, x0, x1) around the hole of a (1, 1, h, w) mask plus ``margin``, with even offsets
    (so it lines up with the half-size level) and sides multiples of ``modulo`` where the image allows.
    None when the box would cover most of the image anyway."""
    h, w = mask.shape[-2:]
    ys = torch.nonzero(mask[0, 0].amax(dim=1) > 0.5).flatten()
    xs = torch.nonzero(mask[0, 0].amax(dim=0) > 0.5).flatten()

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        lo, hi = max(0, lo - margin), min(size, hi + margin)
        lo -= lo % 2
        side = -(-(hi - lo) // modulo) * modulo
        if side >= size:
            return 0, size
        hi = lo + side
        if hi > size:
            lo = size - side
            lo -= lo % 2
            hi = lo + side
        return lo, hi

    y0, y1 = span(int(ys[0]), int(ys[-1]) + 1, h)
    x0, x1 = span(int(xs[0]), int(xs[-1]) + 1, w)
    if (y1 - y0) * (x1 - x0) > 0.8 * h * w:
        return None
    return y0, y1, x0, x1


# --------------------------------------------------------------------------------------------------
# Whole image
# --------------------------------------------------------------------------------------------------


def _autograd_ready(model: object) -> None:
    """Replace weights created under torch.inference_mode() (ComfyUI runs nodes in it) by normal
    tensors: inference tensors cannot be saved for backward."""
    if not isinstance(model, nn.Module):
        return
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is not None and t.is_inference():
                    c = t.clone()
                    store[k] = nn.Parameter(c, requires_grad=False) if isinstance(t, nn.Parameter) else c


def _as_bchw(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 3:
        image = image[None]
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None]
    check_shape(mask, "1,1,H,W", "mask", known=check_shape(image, "1,3,H,W", "image"))
    return image, mask


def multiscale_refine(
    model: Refinable,
    image: torch.Tensor,
    mask: torch.Tensor,
    config: RefineConfig | None = None,
    guide: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
) -> RefineResult:
    """Refine one image.

    image (1, 3, H, W) or (3, H, W) in [0, 1]; mask (1, 1, H, W) / (H, W), > 0 = hole (soft masks count
    as hole wherever non-zero, as the reference's ``mask >= 1e-8``); guide: optional
    (1, 3, h, w) inpainted image used as the coarsest level's result instead of a plain pass (resized
    to that level; one the size of the working image goes down the same pyramid). ``device``: where
    to compute (default: the image's). ``config.n_iters == 0``: one plain pass at the working size.

    Works under ``torch.inference_mode()`` (inputs are cloned, gradients re-enabled). ``progress``
    is called after every forward pass and may raise to cancel. Returns the result at the working size
    (H, W reduced to the pixel budget; see :func:`paste_back`).
    """
    cfg = config or RefineConfig()
    cfg.check()
    if not isinstance(model, Refinable):
        raise PipelineError(f"model: a {type(model).__name__} cannot be refined (it has no front/rear split)")
    with torch.inference_mode(False), torch.enable_grad():
        dev = torch.device(device) if device is not None else image.device
        image, mask = _as_bchw(image, mask)
        image = image.detach().to(dev, torch.float32).clone()
        mask = (mask.detach().to(dev, torch.float32) >= EPS).float()
        if guide is not None:
            guide = guide.detach().to(dev, torch.float32).clone()
            if guide.ndim == 3:
                guide = guide[None]
            check_shape(guide, "1,3,h,w", "guide")
        _autograd_ready(model)
        was_training = isinstance(model, nn.Module) and model.training
        if was_training:
            model.eval()  # BatchNorm must use its running statistics
        try:
            return _refine(model, image, mask, cfg, guide, progress)
        finally:
            if was_training:
                model.train()


def _refine(
    model: Refinable,
    image: torch.Tensor,
    mask: torch.Tensor,
    cfg: RefineConfig,
    guide: torch.Tensor | None,
    progress: ProgressFn | None,
) -> RefineResult:
    if cfg.n_iters == 0:
        images, masks = build_pyramid(image, mask, 1, 1, cfg.px_budget)
    else:
        images, masks = build_pyramid(image, mask, cfg.min_side, cfg.max_scales, cfg.px_budget)
    res = RefineResult(image=images[-1], sizes=[tuple(i.shape[-2:]) for i in images])
    per_level = max(cfg.n_iters, 1)
    total = 1 + (len(images) - 1) * per_level
    done = [0]

    def tick(text: str) -> None:
        done[0] = min(done[0] + 1, total)
        report(progress, done[0], total, text)

    def level_done(s: int) -> None:
        # Levels that stop early (or are skipped) count as complete.
        end = 1 + s * per_level
        if done[0] < end:
            done[0] = end
            report(progress, end, total, f"level {s + 1}/{len(images)} done")

    if float(masks[-1].max()) < 0.5:  # no hole: nothing to fill (the pyramid's masks are conservative)
        res.losses = [[] for _ in images]
        res.crops = [None for _ in images]
        level_done(len(images) - 1)
        return res
    out: torch.Tensor | None = None
    for s, (img, m) in enumerate(zip(images, masks)):
        losses: list[float] = []
        res.losses.append(losses)
        res.crops.append(None)
        if s == 0 and guide is not None:
            out = _guide_level(guide, img, m, images[-1].shape[-2:], len(images))
            tick("guide")
        elif s > 0 and cfg.crop and (box := _crop_box(m, cfg.crop_margin, cfg.modulo)) is not None:
            y0, y1, x0, x1 = box
            res.crops[-1] = box
            assert out is not None
            ref = out[..., y0 // 2 : y0 // 2 + (y1 - y0) // 2, x0 // 2 : x0 // 2 + (x1 - x0) // 2]
            crop_m = m[..., y0:y1, x0:x1]
            # The known term is a mean over the crop's known pixels: weigh it by the crop's share of
            # the level's, so that the crop balances its two terms as the whole image does.
            scale = _known_count(crop_m, cfg.modulo) / _known_count(m, cfg.modulo)
            part = _refine_level(model, img[..., y0:y1, x0:x1], crop_m, ref, cfg, tick, losses, scale)
            out = img.clone()
            out[..., y0:y1, x0:x1] = part
        else:
            out = _refine_level(model, img, m, out if s > 0 else None, cfg, tick, losses)
        level_done(s)
    assert out is not None
    res.image = out
    return res


def _guide_level(
    guide: torch.Tensor, img: torch.Tensor, m: torch.Tensor, work_hw: Sequence[int], n_levels: int
) -> torch.Tensor:
    """The coarsest level's result from a guide: the guide brought to the level's size, composited."""
    if tuple(guide.shape[-2:]) == tuple(work_hw):
        g = guide
        for _ in range(n_levels - 1):
            g = downscale_image(g)
    else:
        shrink = guide.shape[-2] > img.shape[-2] or guide.shape[-1] > img.shape[-1]
        g = F.interpolate(
            guide, size=tuple(img.shape[-2:]), mode="bilinear", align_corners=False, antialias=shrink
        )
    return m * g.clamp(0, 1) + (1 - m) * img


def paste_back(image: torch.Tensor, mask: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
    """Bring a result made at a reduced working size back to the input: (1, 3, h, w) resized
    (bilinear) to the image's (1, 3, H, W) and used inside the mask (> 0) only; known pixels are the
    input's, bit for bit."""
    image, mask = _as_bchw(image, mask)
    refined = refined.to(image.device, image.dtype)
    if refined.shape[-2:] != image.shape[-2:]:
        refined = F.interpolate(refined, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    return torch.where(mask >= EPS, refined.clamp(0, 1), image)


def frame_filler(
    model: Refinable,
    config: RefineConfig | None = None,
    device: torch.device | str | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``fill(frame (H,W,3), to_fill (H,W)) -> (H,W,3)`` for :func:`~..propagate.propagate_fill`:
    the pixels no frame shows are inpainted by ``model`` (LaMa), one plain pass at the pixel budget
    (``config.n_iters == 0``, the default here) or refined over the pyramid with ``config``; the rest
    of the frame (known and propagated pixels) is its context and is kept."""
    cfg = config or RefineConfig(n_iters=0)

    def fill(frame: torch.Tensor, to_fill: torch.Tensor) -> torch.Tensor:
        out = refine_frames(
            model, frame[None, ..., :3], to_fill[None], cfg, device=device, restore_size=True
        )[0]
        return torch.where(to_fill[..., None] > 0.5, out.to(frame), frame[..., :3])

    return fill


def refine_frames(
    model: Refinable,
    images: torch.Tensor,
    masks: torch.Tensor,
    config: RefineConfig | None = None,
    guides: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
    restore_size: bool = True,
) -> torch.Tensor:
    """Refine a batch one frame at a time (ComfyUI layout).

    images (B, H, W, 3), masks (B, H, W) or (1, H, W) (one for all), guides (B or 1, h, w, 3) or None.
    Returns (B, H, W, 3) float32 on the CPU: at the input size with known pixels untouched
    (``restore_size``), or at the working size of the pixel budget (the reference's output).
    ``progress(done, total, text)`` counts forward passes over the whole batch.
    """
    cfg = config or RefineConfig()
    cfg.check()
    check_shape(images[..., :3], "B,H,W,3", "image")
    b, h, w = images.shape[:3]
    masks = as_masks(masks, b, (h, w), "mask")
    if guides is not None:
        check_shape(guides[..., :3], "B,h,w,3", "guide")
        if guides.shape[0] not in (1, b):
            raise PipelineError(f"guide: {guides.shape[0]} images for {b} frames; give one per frame or one")
    if cfg.n_iters:
        sizes = pyramid_sizes(h, w, cfg.min_side, cfg.max_scales, cfg.px_budget)
    else:  # one plain pass at the pixel budget
        sizes = pyramid_sizes(h, w, 1, 1, cfg.px_budget)
    small = min([(h, w), *sizes], key=min)
    if min(small) < MIN_IMAGE_SIDE:
        at = "" if small == (h, w) else f" (a pyramid level of {small[1]}x{small[0]}; raise px_budget)"
        raise PipelineError(
            f"image: {w}x{h} is too small to inpaint{at}; the network needs at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels"
        )
    full = [i for i in range(masks.shape[0]) if bool((masks[i] >= EPS).all())]
    if full:
        raise PipelineError(
            f"mask: image {full[0]} is all hole ({len(full)} of {b} images are), so nothing is known to "
            "fill it from; check the mask (inverted or blank white?)"
        )
    levels = len(sizes) if cfg.n_iters else 1
    per_frame = 1 + (levels - 1) * max(cfg.n_iters, 1)
    total = b * per_frame
    outs = []
    last = [0]
    for i in range(b):
        img = images[i, ..., :3].permute(2, 0, 1)[None]
        m = masks[i][None, None]
        g = (
            None
            if guides is None
            else guides[i if guides.shape[0] > 1 else 0, ..., :3].permute(2, 0, 1)[None]
        )

        def sub(done: int, _total: int, text: str, i: int = i) -> None:
            last[0] = i * per_frame + done
            report(progress, last[0], total, f"frame {i + 1}/{b}: {text}")

        res = multiscale_refine(model, img, m, cfg, guide=g, progress=sub, device=device)
        out = res.image
        if restore_size:
            with torch.inference_mode(False):
                out = paste_back(img.to(out.device, torch.float32), m.to(out.device), out)
        out = check_finite_result(
            out[0].permute(1, 2, 0).detach().float().cpu(),
            f"image {i}: the refined result",
            "fp16 autocast or the weights may be at fault: try precision fp32, or check the model file",
        )
        outs.append(out)
        if last[0] < (i + 1) * per_frame:
            last[0] = (i + 1) * per_frame
            report(progress, last[0], total, f"frame {i + 1}/{b} done")
    return torch.stack(outs)
