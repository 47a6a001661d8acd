"""Masks of a clip (1 = hole): from a folder, one static image, a MASK batch or the alpha channel.

Masks are binarised at ``threshold`` of the way from the clip's lowest to its highest mask value
(0.5 = half-way), so JPEG noise, feathered edges and 0/1 label maps all give the intended hole;
``threshold`` 0 keeps "any non-zero value is a hole". Every repair of the user's masks (a wrong size,
a palette or colour image, strokes on a transparent layer, one mask for all frames) and the threshold
used are logged and returned as notes; :func:`check_holes` reports the hole's share, warns about masks
that look inverted and refuses frames that are (almost) all hole.

Masks are read on demand (:class:`MaskSource`, built by :func:`open_masks`): a clip's mask files are
read once up front for their value range only (the threshold), then one at a time when a frame needs
its mask, so a clip of any length never holds its masks in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..checks import all_hole_error, check_shape
from ..errors import PipelineError, note, short_list, warn, wh
from ..progress import ProgressFn, report
from .paths import IMAGE_EXTENSIONS, fingerprint_paths, list_images

# A frame whose hole covers this share or more is refused unless large holes are allowed.
LARGE_HOLE = 0.95


@dataclass
class MaskValues:
    """One mask image as a single channel: ``values`` ``(H, W)`` (higher = more hole) on a scale of
    0..``full``; ``kind`` says how it was made from the file (``gray``, ``palette``, ``colour``,
    ``alpha``); ``bright_zero``: a palette image whose index 0 (known) is shown bright."""

    values: np.ndarray
    full: float
    kind: str = "gray"
    bright_zero: bool = False


def _full_scale(a: np.ndarray) -> float:
    if a.dtype == np.bool_:
        return 1.0
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.uint16:
        return 65535.0
    top = float(a.max()) if a.size else 0.0
    if np.issubdtype(a.dtype, np.floating):
        return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    return 255.0 if top <= 255 else 65535.0 if top <= 65535 else float(np.iinfo(a.dtype).max)


def mask_values(array: np.ndarray) -> MaskValues:
    """Any mask image array -> one channel of mask values (not yet binarised).

    ``(H, W)``: gray levels (8/16-bit, float or bool). ``(H, W, 3)``: the brightest channel (coloured
    masks). ``(H, W, 2|4)``: the alpha channel when it varies (strokes painted on a transparent layer,
    whatever their colour), else the gray/colour channels as above.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return MaskValues(a.astype(np.uint8) * 255 if a.dtype == np.bool_ else a, _full_scale(a))
    if a.ndim != 3:
        raise ValueError(f"a mask image must be (H, W) or (H, W, C), got shape {a.shape}")
    c = a.shape[2]
    if c in (2, 4):
        alpha = a[:, :, c - 1]
        if alpha.size and alpha.min() != alpha.max():
            return MaskValues(alpha, _full_scale(alpha), "alpha")
        a = a[:, :, : c - 1]
        if c == 2:
            return MaskValues(a[:, :, 0], _full_scale(a))
    return MaskValues(a.max(axis=2), _full_scale(a), "colour")


def threshold_value(lo: float, hi: float, full: float, threshold: float) -> float:
    """The value above which a mask value is a hole: ``threshold`` of the way from ``lo`` to ``hi``
    (the lowest and highest values of the clip's masks); a uniform mask is compared with
    ``threshold * full``; ``threshold`` 0 means any value above 0."""
    if threshold <= 0:
        return 0.0
    if hi <= lo:
        return threshold * full
    return lo + threshold * (hi - lo)


def binarize_mask(array: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """One mask image -> bool ``(H, W)``, True = hole, binarised at ``threshold`` of its own value
    range (see :func:`threshold_value`; 0 = any non-zero value). Palette images are read by
    :func:`read_mask_values` (indices, not colours)."""
    mv = mask_values(array)
    v = mv.values
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    return v > threshold_value(lo, hi, mv.full, threshold)


def read_mask_values(path: Path | str) -> MaskValues:
    """Read a mask image with PIL -> :class:`MaskValues`. Palette images give their indices: index 0
    is known, any other index is hole (values 0 / 255), whatever colours the palette shows."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA"):
                idx = np.asarray(im.convert("P") if im.mode == "PA" else im)
                rgb = (im.getpalette() or [0, 0, 0])[:3]
                bright = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 127
                return MaskValues((idx != 0).astype(np.uint8) * 255, 255.0, "palette", bool(bright))
            im.load()
            if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except Image.DecompressionBombError as e:
        raise PipelineError(
            f"masks: '{path.name}' is larger than the image reader allows ({e}); give masks at the frame size"
        ) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise PipelineError(f"masks: cannot read mask image '{path}' (corrupt or not an image): {e}") from e
    try:
        return mask_values(array)
    except ValueError as e:
        raise PipelineError(f"masks: cannot use '{path}' as a mask: {e}") from e


def read_mask_file(path: Path | str, threshold: float = 0.5) -> np.ndarray:
    """Read one mask image -> bool ``(H, W)``, True = hole, binarised at ``threshold`` of its value
    range (0 = any non-zero value; palette images by index)."""
    mv = read_mask_values(path)
    v = mv.values
    return v > threshold_value(float(v.min()), float(v.max()), mv.full, threshold)


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask (bool or values) to ``size`` (H, W); values are kept."""
    if mask.shape == tuple(size):
        return mask
    src = mask.astype(np.uint8) if mask.dtype == np.bool_ else mask
    if src.dtype not in (np.uint8, np.uint16, np.float32):
        src = src.astype(np.float32)
    out = cv2.resize(src, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool) if mask.dtype == np.bool_ else out


class _Resized:
    """Collects 'mask of another size' fix-ups, one note per original size (not one per file)."""

    def __init__(self) -> None:
        self.by_size: dict[tuple[int, int], list[str]] = {}

    def add(self, shape: tuple[int, int], name: str) -> None:
        self.by_size.setdefault(shape, []).append(name)

    def notes(self, size: tuple[int, int], notes: list[str]) -> None:
        for shape, names in self.by_size.items():
            which = f"'{names[0]}'" if len(names) == 1 else f"{len(names)} masks ({short_list(names)})"
            note(
                notes,
                f"masks: resized {which} from {wh(shape)} to the frame size {wh(size)} (nearest neighbour)",
            )


def _which(names: list[str]) -> str:
    return f"'{names[0]}' is" if len(names) == 1 else f"{len(names)} masks ({short_list(names)}) are"


class _Kinds:
    """Collects how mask files were read (palette, colour, transparent layer, JPEG): one note each."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = {}

    def add(self, mv: MaskValues, name: str) -> None:
        if mv.kind != "gray":
            self.by_kind.setdefault(mv.kind, []).append(name)
        if mv.bright_zero:
            self.by_kind.setdefault("bright_zero", []).append(name)
        if name.lower().endswith((".jpg", ".jpeg")):
            self.by_kind.setdefault("jpeg", []).append(name)

    def notes(self, threshold: float, notes: list[str]) -> None:
        k = self.by_kind
        if "palette" in k:
            note(
                notes,
                f"masks: {_which(k['palette'])} palette images: colour index 0 is known and every other "
                "index is the hole, whatever colours the palette shows",
            )
        if "bright_zero" in k:
            warn(
                notes,
                f"masks: {_which(k['bright_zero'])} palette images whose index 0 (the known part) is "
                "shown light: if the light region is the object to remove, the masks are inverted; "
                "set invert_mask",
            )
        if "colour" in k:
            note(notes, f"masks: {_which(k['colour'])} colour images: each pixel's brightest channel is used")
        if "alpha" in k:
            note(
                notes,
                f"masks: {_which(k['alpha'])} partly transparent: the alpha channel is the mask "
                "(painted = hole, transparent = known)",
            )
        if "jpeg" in k and threshold <= 0:
            warn(
                notes,
                f"masks: {_which(k['jpeg'])} JPEG files and mask_threshold is 0 (any non-zero value is a "
                "hole): JPEG noise around and away from the strokes becomes hole; use mask_threshold 0.5 "
                "or save masks as PNG",
            )


def _fmt(v: float, full: float) -> str:
    """A mask value for a message: 3 digits on a 0..1 scale, else at most one decimal."""
    return f"{v:.3g}" if full <= 1.0 else f"{v:.1f}".removesuffix(".0")


@dataclass
class _Range:
    """The lowest and highest value of one mask source on its scale 0..``full``."""

    lo: float
    hi: float
    full: float

    @classmethod
    def of(cls, values: np.ndarray | torch.Tensor, full: float) -> _Range:
        if isinstance(values, torch.Tensor):
            lo, hi = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
        else:
            lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return cls(lo, hi, full)


def _cut(ranges: Sequence[_Range], threshold: float, what: str, notes: list[str]) -> float:
    """The one threshold of a clip's masks, as a fraction of the full scale (a value is a hole above
    ``fraction * full``), from the clip's value range; noted, with a note when no value is above."""
    fulls = {r.full for r in ranges}
    full = fulls.pop() if len(fulls) == 1 else 1.0  # the files' scale, or fractions when they differ
    lo = min(r.lo / r.full for r in ranges) * full
    hi = max(r.hi / r.full for r in ranges) * full
    cut = threshold_value(lo, hi, full, threshold)
    if threshold <= 0:
        note(notes, f"masks: {what}: any non-zero value is a hole (mask_threshold 0)")
    else:
        if hi > lo:
            how = (
                f"{threshold:g} of the way from the lowest value {_fmt(lo, full)} "
                f"to the highest {_fmt(hi, full)}"
            )
        else:
            how = f"{threshold:g} of the full scale, as every value is {_fmt(hi, full)}"
        note(
            notes,
            f"masks: {what}: a pixel is a hole where its value is above {_fmt(cut, full)} of "
            f"0..{_fmt(full, full)} (mask_threshold {how})",
        )
    if hi <= cut:
        note(notes, f"masks: no value of {what} is above the threshold; nothing will be filled")
    return cut / full


class MaskSource:
    """The masks of a clip (True = hole) read on demand at the frames' size ``(H, W)``.

    Built by :func:`open_masks`: frame i's mask is one file of a folder (a static mask repeats one
    file), a slice of a MASK batch, the frame's alpha channel (transparency = mask value) or nothing.
    A value is a hole above ``cut`` of its full scale (the clip's one threshold). ``read(i)`` decodes
    one mask; consecutive frames sharing a file decode it once.
    """

    def __init__(
        self,
        count: int,
        size: tuple[int, int],
        files: list[Path] | None = None,
        tensor: torch.Tensor | None = None,
        alpha: Callable[[int], np.ndarray | None] | None = None,
        invert: bool = False,
        cut: float = 0.5,
    ) -> None:
        self.count, self.size, self.files, self.tensor, self.alpha = count, size, files, tensor, alpha
        self.invert, self.cut = invert, float(cut)
        self._last: tuple[Path, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> torch.Tensor:
        size = self.size
        if self.files is not None:
            f = self.files[i]
            if self._last is None or self._last[0] != f:
                mv = read_mask_values(f)
                self._last = (f, fit_mask(mv.values > self.cut * mv.full, size))
            hole = self._last[1]
        elif self.tensor is not None:
            hole = fit_mask((self.tensor[i if self.tensor.shape[0] > 1 else 0] > self.cut).numpy(), size)
        elif self.alpha is not None:
            a = self.alpha(i)
            hole = np.zeros(size, bool) if a is None else fit_mask(1.0 - a > self.cut, size)
        else:
            hole = np.zeros(size, bool)
        out = torch.from_numpy(np.ascontiguousarray(hole))
        return ~out if self.invert else out

    def fingerprint(self) -> str:
        how = f"|{self.invert}|{self.cut!r}"
        if self.files is not None:
            return fingerprint_paths(*self.files) + how
        if self.tensor is not None:
            return hashlib.sha256(self.tensor.numpy().tobytes()).hexdigest() + how
        return f"{'alpha' if self.alpha is not None else 'none'}|{self.count}" + how


def check_threshold(threshold: float) -> float:
    """``mask_threshold`` as a float in 0..0.99, else PipelineError naming it."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        shown = f"{value:g}" if value == value else repr(threshold)
        raise PipelineError(
            f"mask_threshold: {shown} is not valid; use 0.5 (half-way between the masks' lowest and "
            "highest values), a value in 0..0.99, or 0 for any non-zero value"
        )
    return value


def open_masks(
    source: Path | torch.Tensor | None,
    num_frames: int,
    size: tuple[int, int],
    frame_names: Sequence[str] = (),
    selected: Sequence[int] | None = None,
    alpha: torch.Tensor | Callable[[int], np.ndarray | None] | None = None,
    invert: bool = False,
    threshold: float = 0.5,
    progress: ProgressFn | None = None,
) -> tuple[MaskSource, list[str]]:
    """The masks of ``num_frames`` frames of ``size`` (H, W), read on demand; and the notes.

    ``source``: a folder of masks (matched by file name, or a single static mask, or by order; with
    ``selected`` - the frames' indices in the full source - a folder with one mask per source frame
    also works), a single mask image (static), a ComfyUI MASK tensor ``(B, H, W)`` / ``(H, W)``
    (B == 1 broadcast), or None (holes from ``alpha``: an ``(T, H, W)`` tensor or a function of the
    frame index, transparent = hole; else no holes). Masks of another size are resized (nearest)
    with a note. Values are binarised at ``threshold`` of the way from the clip's lowest to its
    highest mask value (0 = any non-zero value is a hole; see :func:`threshold_value`): each mask
    file is read once here for its range (``progress`` reports it). The frames' alpha channel is
    compared with ``threshold`` of its full scale (it is read with the frames). ``invert`` swaps
    hole/known.
    """
    t = int(num_frames)
    h, w = int(size[0]), int(size[1])
    threshold = check_threshold(threshold)
    notes: list[str] = []
    if isinstance(source, torch.Tensor):
        m = _tensor_masks(source, t, (h, w), notes)
        cut = _cut([_Range.of(m, 1.0)], threshold, "the MASK input", notes)
        return MaskSource(t, (h, w), tensor=m, invert=invert, cut=cut), notes
    if source is None:
        if alpha is None:
            note(notes, "masks: no mask given; nothing will be filled (every pixel is known)")
            if invert:
                note(notes, "masks: invert ignored because no mask was given")
            return MaskSource(t, (h, w)), notes
        reader = _alpha_reader(alpha, t, (h, w), notes)
        if reader is None:
            return MaskSource(t, (h, w)), notes
        return MaskSource(t, (h, w), alpha=reader, invert=invert, cut=threshold), notes
    path = Path(source)
    if not path.exists():
        raise PipelineError(f"masks: '{path}' not found")
    if path.is_dir():
        plan = _folder_plan(path, t, list(frame_names), selected, notes)
        what = f"the masks in '{path.name}'"
    else:
        plan = [path] * t
        if t > 1:
            note(notes, f"masks: '{path.name}' is a single mask; used as a static mask for all {t} frames")
        what = f"'{path.name}'"
    # Each file once, in order, for its size and value range (the clip's threshold needs them all).
    resized, kinds = _Resized(), _Kinds()
    ranges: list[_Range] = []
    unique = list(dict.fromkeys(plan))
    for k, f in enumerate(unique):
        mv = read_mask_values(f)
        kinds.add(mv, f.name)
        if mv.values.shape != (h, w):
            resized.add(mv.values.shape, f.name)
        ranges.append(_Range.of(mv.values, mv.full))
        report(progress, k + 1, len(unique))
    resized.notes((h, w), notes)
    kinds.notes(threshold, notes)
    cut = _cut(ranges, threshold, what, notes)
    return MaskSource(t, (h, w), files=plan, invert=invert, cut=cut), notes


def load_masks(
    source: Path | torch.Tensor | None,
    num_frames: int,
    size: tuple[int, int],
    frame_names: Sequence[str] = (),
    selected: Sequence[int] | None = None,
    alpha: torch.Tensor | None = None,
    invert: bool = False,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, list[str]]:
    """All masks of a clip at once (see :func:`open_masks`): (masks ``(T, H, W)`` float32 1 = hole, notes)."""
    masks, notes = open_masks(source, num_frames, size, frame_names, selected, alpha, invert, threshold)
    out = torch.empty((int(num_frames), int(size[0]), int(size[1])), dtype=torch.float32)
    for k in range(int(num_frames)):
        out[k] = masks.read(k)
    return out, notes


def _tensor_masks(source: torch.Tensor, t: int, size: tuple[int, int], notes: list[str]) -> torch.Tensor:
    """A MASK input checked against the clip: ``(1 or T, h, w)`` float32 on the CPU."""
    m = source.detach().to("cpu", torch.float32)
    if m.ndim == 2:
        m = m[None]
    check_shape(m, "B,H,W", "masks: the MASK input")
    b = m.shape[0]
    if b not in (1, t):
        raise PipelineError(
            f"masks: the MASK input has {b} masks but there are {t} frames; "
            "give one static mask or one mask per frame"
        )
    if not bool(torch.isfinite(m).all()):
        raise PipelineError("masks: the MASK input has NaN or infinite values; check the node that made it")
    if tuple(m.shape[1:]) != size:
        note(
            notes,
            f"masks: resized the MASK input from {wh(tuple(m.shape[1:]))} to the frame size "
            f"{wh(size)} (nearest neighbour)",
        )
    if b == 1 and t > 1:
        note(notes, f"masks: one mask given; used as a static mask for all {t} frames")
    return m


def _alpha_reader(
    alpha: torch.Tensor | Callable[[int], np.ndarray | None], t: int, size: tuple[int, int], notes: list[str]
) -> Callable[[int], np.ndarray | None] | None:
    """Frame i's alpha channel ``(h, w)`` in 0..1 (or None: opaque), from a tensor or a function;
    None when a tensor's alpha is fully opaque (nothing to fill)."""
    used = "masks: no mask given; using the frames' alpha channel (transparent pixels are the hole)"
    if callable(alpha):
        note(notes, used)
        return alpha
    a = alpha.detach().to("cpu", torch.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, t):
        raise PipelineError(f"masks: the frames' alpha channel has shape {tuple(alpha.shape)} for {t} frames")
    if bool((a >= 1.0).all()):
        note(
            notes,
            "masks: no mask given and the frames' alpha channel is fully opaque; nothing will be filled",
        )
        return None
    note(notes, used)
    return lambda i: a[i if a.shape[0] > 1 else 0].numpy()


def _folder_plan(
    folder: Path,
    t: int,
    frame_names: list[str],
    selected: Sequence[int] | None,
    notes: list[str],
) -> list[Path]:
    """The mask file of each frame from a folder of masks (by name, by order or one static mask)."""
    files = list_images(folder)
    if not files:
        raise PipelineError(
            f"masks: no images found in '{folder}' (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    by_stem: dict[str, Path] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)  # 00001.png before 00001.jpg (natural sort); one per name
    use_names = len(frame_names) == t and any(n in by_stem for n in frame_names)

    if len(files) == 1:
        # One mask: static, whatever its name.
        plan: list[Path] = [files[0]] * t
        if t > 1:
            note(
                notes,
                f"masks: '{folder.name}' has a single mask '{files[0].name}'; "
                f"used as a static mask for all {t} frames",
            )
    elif use_names:
        missing = [n for n in frame_names if n not in by_stem]
        if missing:
            raise PipelineError(
                f"masks: {len(missing)} of {t} frames have no mask in '{folder}' "
                f"(no mask for frames {short_list(missing)}); the folder has {len(files)} masks matched "
                f"to frames by file name, which is neither one static mask nor a mask for every frame"
            )
        plan = [by_stem[n] for n in frame_names]
    else:
        how = "by order" if not frame_names else "by order (their file names do not match the frames')"
        if len(files) == t:
            plan = files
            if frame_names:
                note(notes, f"masks: matched the {t} masks in '{folder.name}' to the frames {how}")
        elif selected is not None and len(selected) == t and t > 0 and max(selected) < len(files):
            plan = [files[i] for i in selected]
            note(
                notes,
                f"masks: picked {t} of the {len(files)} masks in '{folder.name}' {how}, "
                "following the frame selection (skip_first / every_nth / frame_cap)",
            )
        else:
            extra = ""
            if selected is not None and len(selected) and max(selected) >= t:
                extra = f" (nor one per source frame up to frame {max(selected)})"
            raise PipelineError(
                f"masks: '{folder}' has {len(files)} masks but there are {t} frames; it is neither one "
                f"static mask nor a mask for every frame{extra}"
            )

    return plan


def _frame_label(t: int, names: Sequence[str]) -> str:
    name = names[t] if t < len(names) else ""
    return f"frame {t}" + (f" ('{name}')" if name and name != f"{t:05d}" else "")


def check_holes(
    masks: torch.Tensor | Sequence[torch.Tensor],
    names: Sequence[str] = (),
    allow_large_holes: bool = False,
    inverted: bool = False,
    skip: Sequence[int] = (),
    progress: ProgressFn | None = None,
) -> list[str]:
    """Look at the holes of a clip's final masks ``(T, H, W)`` (1 = hole; a tensor, or a sequence of
    ``(H, W)`` masks read one at a time, e.g. a :class:`~.lazy.LazyClip`'s ``masks()``) -> notes.

    Notes the hole's share of the pixels; warns when the masks look inverted (the hole is most of the
    clip, or most of the frame border); refuses (PipelineError naming ``masks``) a frame whose hole
    covers 95 % or more unless ``allow_large_holes``. ``inverted``: invert_mask was on (for the
    advice); ``skip``: frames that are not filled (edited keyframes).
    """
    notes: list[str] = []
    if isinstance(masks, torch.Tensor):
        check_shape(masks, "T,H,W", "masks")
    t = len(masks)
    skipped = {int(s) for s in skip}
    keep = [i for i in range(t) if i not in skipped]
    # Frame by frame: no temporary the size of the clip.
    shares, borders = [], []
    for k, i in enumerate(keep):
        hole = masks[i] > 0.5
        h, w = (int(x) for x in hole.shape)
        report(progress, k + 1, len(keep))
        shares.append(float(hole.sum()) / (h * w))
        if h > 2 and w > 2:
            edge = int(hole[0].sum() + hole[-1].sum() + hole[1:-1, 0].sum() + hole[1:-1, -1].sum())
            borders.append(edge / (2 * w + 2 * (h - 2)))
    if not any(shares):
        return notes
    share = torch.tensor(shares)
    mean = float(share.mean())
    lo, hi = float(share.min()), float(share.max())
    border_share = sum(borders) / len(borders) if borders else 0.0
    where = "the image" if t == 1 else "the pixels"
    spread = "" if t == 1 else f" (per frame {lo:.1%} to {hi:.1%})"
    note(notes, f"masks: the hole covers {mean:.1%} of {where}{spread}")
    if mean > 0.5 or border_share > 0.9:
        why = f"the hole covers {mean:.1%} of {where}" if mean > 0.5 else "the hole covers the frame border"
        fix = (
            "invert_mask is on: if the masks already mark the object in white, turn it off"
            if inverted
            else "if the masks mark the object in black on white, set invert_mask"
        )
        warn(notes, f"masks: {why}, so the masks may be inverted (the hole is where they are white); {fix}")
    large = torch.nonzero(share >= LARGE_HOLE).flatten().tolist()  # positions in `keep`
    if large and not allow_large_holes:
        worst = max(large, key=lambda j: shares[j])
        others = f" ({len(large)} frames have a hole of {LARGE_HOLE:.0%} or more)" if len(large) > 1 else ""
        raise PipelineError(
            f"masks: the hole covers {shares[worst]:.1%} of {_frame_label(keep[worst], names)}"
            f"{others}, leaving almost nothing to fill it from. Check that the masks are not inverted "
            "(invert_mask) and that noise or a faint background is not read as hole (mask_threshold); "
            "set allow_large_holes to fill such frames anyway"
        )
    if not skipped and len(keep) > 1 and min(shares) >= 1.0:  # one image: its method says so
        raise all_hole_error("masks")
    if large:
        warn(
            notes,
            f"masks: {len(large)} frames have a hole of {LARGE_HOLE:.0%} or more (allow_large_holes is on)",
        )
    return notes
