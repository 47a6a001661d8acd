"""Loading and saving of frames, masks and keyframes; the input side of every pipeline.

Conventions: frames are float32 tensors in [0, 1] shaped ``(T, H, W, 3)`` (RGB); masks are float32
``(T, H, W)`` with 1 = hole (region to fill) and 0 = known. Every function that repairs user input
(a mask of the wrong size, a static mask broadcast to all frames, ...) logs the fix-up on the
``keyframe_propagation`` logger and returns it as a note, so the node can show it to the user.
Problems the user has to fix raise :class:`PipelineError` naming the input as the user sees it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageSequence

from .progress import PipelineError, ProgressFn, report

logger = logging.getLogger("keyframe_propagation")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")

# Containers that accept the mp4v codec write_video uses.
_MP4V_CONTAINERS = (".mp4", ".mov", ".avi", ".mkv", ".m4v")

# How many offending names an error message lists before "...".
_LIST_MAX = 5


def _note(notes: list[str], text: str) -> None:
    """Record a fix-up: logged for the console and kept for the node's UI."""
    logger.info(text)
    notes.append(text)


def _short_list(items: Sequence[object], limit: int = _LIST_MAX) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _wh(hw: tuple[int, int]) -> str:
    """Sizes in messages are written width x height, as image editors show them."""
    return f"{hw[1]}x{hw[0]}"


# --------------------------------------------------------------------------------------------------
# Keyframe lists
# --------------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"-?\d+")
_RANGE_RE = re.compile(r"(-?\d+)\s*-\s*(-?\d+)(?:\s*:\s*(-?\d+))?")


def parse_keyframes(text: str, num_frames: int) -> list[int]:
    """Parse a keyframe list such as ``"0,20,40"``, ``"0-60:20"``, ``"10-14"`` or ``"0,-1"``.

    Ranges are ``start-end`` (inclusive) with an optional ``:step``; negative indices count from the
    end (``-1`` is the last frame). Returns sorted unique indices in ``[0, num_frames)``; ``""`` -> ``[]``.
    Raises PipelineError naming ``keyframes`` and the offending token.
    """
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):  # a pasted Python/JSON list
        text = text[1:-1]
    if not text.strip():
        return []
    n = int(num_frames)
    if n <= 0:
        raise PipelineError(f"keyframes: '{text}' given, but there are no frames to pick keyframes from")
    valid = f"valid indices are 0..{n - 1} (or -{n}..-1 counting from the end)"
    syntax = "expected indices like '0,20,40', ranges like '0-60:20' or '10-14'"

    def bad(token: str, why: str) -> PipelineError:
        return PipelineError(f"keyframes: '{token}' {why}; {syntax}; {valid}")

    def index(value: str, token: str) -> int:
        i = int(value)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise bad(token, f"refers to frame {i}, which does not exist ({n} frames)")
        return j

    result: set[int] = set()
    for raw in re.split(r"[,;]", text):
        token = raw.strip()
        if not token:
            continue  # tolerate "0,20," and "0,,20"
        # "0 20 40" (spaces instead of commas) is split further; "0 - 60 : 20" is one range.
        parts = [token] if _RANGE_RE.fullmatch(token) or _INT_RE.fullmatch(token) else token.split()
        for part in parts:
            if _INT_RE.fullmatch(part):
                result.add(index(part, part))
                continue
            m = _RANGE_RE.fullmatch(part)
            if m is None:
                raise bad(part, "is not a frame index or range")
            start, end = index(m.group(1), part), index(m.group(2), part)
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step < 1:
                raise bad(part, f"has step {step}; the step must be 1 or more")
            if start > end:
                raise bad(part, f"is a range that goes backwards (frame {start} to {end})")
            result.update(range(start, end + 1, step))
    return sorted(result)


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def resolve_user_path(path: str | Path, allowed_roots: Sequence[str | Path], what: str = "path") -> Path:
    """Resolve a path typed by the user, confined to ``allowed_roots``.

    Relative paths are looked up under the first root (then the others); absolute paths must lie
    inside one of the roots after normalising ``..``. Containment is checked on the path as typed,
    not on symlink targets, as ComfyUI itself does: a link that the owner of the input folder put
    there (e.g. to a footage drive) is allowed, while ``..`` and absolute paths elsewhere are not.
    With no roots (CLI use) any existing path is allowed. ``what`` is the input's name used in
    messages (``frames``, ``masks``, ...).
    """
    # Windows "Copy as path" wraps the path in quotes; people paste it as is.
    text = str(path).strip().strip('"').strip("'").strip()
    if not text:
        raise PipelineError(f"{what}: no path given")
    p = Path(text).expanduser()
    roots = [Path(os.path.abspath(Path(r).expanduser())) for r in allowed_roots]

    if not roots:
        resolved = p.resolve()
        if not resolved.exists():
            raise PipelineError(f"{what}: '{text}' not found")
        return resolved

    if p.is_absolute():
        candidates = [Path(os.path.abspath(p))]
    else:
        candidates = [Path(os.path.abspath(root / p)) for root in roots]
    inside = [c for c in candidates if any(c == r or c.is_relative_to(r) for r in roots)]
    allowed = ", ".join(f"'{r}'" for r in roots)
    if not inside:
        raise PipelineError(
            f"{what}: '{text}' is outside the allowed folders ({allowed}); "
            "put the files in one of them or give a path relative to the first"
        )
    for c in inside:
        if c.exists():
            return c
    raise PipelineError(f"{what}: '{text}' not found (looked in {allowed})")


def _natural_key(name: str) -> tuple:
    # Alternating (text, number, text, ...) so frame2 sorts before frame10.
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted; hidden files (``.name``) ignored."""
    folder = Path(folder)
    files = [
        f
        for f in folder.iterdir()
        if not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]
    return sorted(files, key=lambda f: _natural_key(f.name))


# --------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------


def _to_float(array: np.ndarray) -> np.ndarray:
    """Any integer/float image -> float32 in [0, 1] (16-bit PNGs scale by 65535, not 255)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype in (np.float32, np.float64, np.float16):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.dtype == np.int8:
        return np.clip(array.astype(np.float32) / 127.0, 0.0, 1.0)
    if array.dtype == np.int16:
        return np.clip(array.astype(np.float32) / 32767.0, 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {array.dtype}")


def _decode_image(path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file -> (RGB float32 (H, W, 3), alpha float32 (H, W) or None).

    Decoded from bytes (np.fromfile + imdecode) because cv2.imread cannot open non-ASCII paths on Windows.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise PipelineError(f"{what}: cannot read '{path}': {e}") from e
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise PipelineError(f"{what}: cannot read image '{path}' (the file is corrupt or not an image)")
    try:
        img = _to_float(img)
    except ValueError as e:
        raise PipelineError(f"{what}: cannot read image '{path}': {e}") from e
    alpha = None
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        rgb = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 2:  # gray + alpha
        rgb, alpha = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1]
    elif img.shape[2] == 3:
        rgb = img[:, :, ::-1]
    else:
        rgb, alpha = img[:, :, 2::-1], img[:, :, 3]
    return np.ascontiguousarray(rgb), (np.ascontiguousarray(alpha) if alpha is not None else None)


def load_image_tensor(path: Path | str, what: str = "image") -> torch.Tensor:
    """A single image file -> float32 RGB tensor ``(H, W, 3)`` in [0, 1] (alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what}: '{path}' not found")
    rgb, _ = _decode_image(path, what)
    return torch.from_numpy(rgb)


# --------------------------------------------------------------------------------------------------
# Loading clips
# --------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """Frames loaded from a folder or a video.

    frames: (T, H, W, 3) float32 RGB in [0, 1].
    alpha: (T, H, W) float32, 1 = opaque, when the source images had an alpha channel; else None.
    names: one name per frame: the file stem, or f"{i:05d}" with i the frame's index in the video.
    fps: frame rate after every-nth (0 when unknown, e.g. image folders).
    source: where the frames came from, for messages.
    notes: fix-ups done while loading.
    selected: index of each loaded frame in the full source sequence (for matching masks by order).
    """

    frames: torch.Tensor
    alpha: torch.Tensor | None
    names: list[str]
    fps: float
    source: str
    notes: list[str] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)


def _check_int(value: object, name: str, minimum: int, hint: str) -> int:
    try:
        as_int = int(value)  # type: ignore[call-overload]
        ok = as_int == value and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok or as_int < minimum:
        raise PipelineError(f"{name}: {value!r} is not valid; {hint}")
    return as_int


def _select(total: int, frame_cap: int, skip_first: int, every_nth: int) -> list[int]:
    """Indices kept: skip the first ``skip_first``, keep every ``every_nth``, then cap."""
    keep = list(range(skip_first, total, every_nth))
    return keep[:frame_cap] if frame_cap > 0 else keep


def _empty_selection_error(total: int, skip_first: int, source: Path) -> PipelineError:
    return PipelineError(
        f"skip_first: skipping {skip_first} frames leaves no frames to load; '{source}' has only {total}"
    )


def load_frames(
    path: Path,
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    progress: ProgressFn | None = None,
) -> Clip:
    """Load a folder of images, a video file or a single image as a :class:`Clip`.

    Selection: skip the first ``skip_first`` frames, then keep every ``every_nth``, then keep at most
    ``frame_cap`` (0 = all). Only selected frames are decoded. Returns frames ``(T, H, W, 3)``.
    """
    frame_cap = _check_int(frame_cap, "frame_cap", 0, "use 0 for no limit or a positive number of frames")
    skip_first = _check_int(skip_first, "skip_first", 0, "use 0 or a positive number of frames to skip")
    every_nth = _check_int(every_nth, "every_nth", 1, "use 1 to load every frame, 2 for every other, ...")
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"frames: '{path}' not found")
    if path.is_dir():
        return _load_folder(path, frame_cap, skip_first, every_nth, progress)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _load_image_files([path], path, frame_cap, skip_first, every_nth, progress)
    return _load_video(path, frame_cap, skip_first, every_nth, progress)


def _load_folder(
    folder: Path, frame_cap: int, skip_first: int, every_nth: int, progress: ProgressFn | None
) -> Clip:
    files = list_images(folder)
    if not files:
        raise PipelineError(
            f"frames: no images found in '{folder}' (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "give a folder of frames or a video file"
        )
    return _load_image_files(files, folder, frame_cap, skip_first, every_nth, progress)


def _load_image_files(
    files: list[Path],
    source: Path,
    frame_cap: int,
    skip_first: int,
    every_nth: int,
    progress: ProgressFn | None,
) -> Clip:
    selected = _select(len(files), frame_cap, skip_first, every_nth)
    if not selected:
        raise _empty_selection_error(len(files), skip_first, source)
    t = len(selected)
    frames: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    first = files[selected[0]]
    for k, idx in enumerate(selected):
        f = files[idx]
        rgb, a = _decode_image(f, "frames")
        if frames is None:
            # Preallocate once: stacking a list would need twice the memory of the clip.
            frames = torch.empty((t, *rgb.shape), dtype=torch.float32)
        elif rgb.shape != tuple(frames.shape[1:]):
            raise PipelineError(
                f"frames: '{f.name}' is {_wh(rgb.shape[:2])} but '{first.name}' is "
                f"{_wh(tuple(frames.shape[1:3]))}; all frames in '{source}' must have the same size"
            )
        frames[k] = torch.from_numpy(rgb)
        if a is not None:
            if alpha is None:
                alpha = torch.ones((t, *rgb.shape[:2]), dtype=torch.float32)  # earlier frames: opaque
            alpha[k] = torch.from_numpy(a)
        report(progress, k + 1, t, f"loading {f.name}")
    assert frames is not None
    return Clip(
        frames=frames,
        alpha=alpha,
        names=[files[i].stem for i in selected],
        fps=0.0,
        source=str(source),
        notes=[],
        selected=selected,
    )


def _load_video(
    path: Path, frame_cap: int, skip_first: int, every_nth: int, progress: ProgressFn | None
) -> Clip:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            if path.suffix.lower() == ".gif":
                return _load_gif(path, frame_cap, skip_first, every_nth, progress)
            raise PipelineError(
                f"frames: cannot open '{path}' as a video (supported: {', '.join(VIDEO_EXTENSIONS)}; "
                f"or give a folder of {', '.join(IMAGE_EXTENSIONS)} images)"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps < 0:
            fps = 0.0
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        expected = len(_select(reported, frame_cap, skip_first, every_nth)) if reported > 0 else 0
        # Kept as uint8 until the end: 4x smaller than float while decoding.
        kept: list[np.ndarray | None] = []
        selected: list[int] = []
        first_shape: tuple[int, ...] = ()
        i = 0
        while not (frame_cap and len(kept) >= frame_cap):
            if i >= skip_first and (i - skip_first) % every_nth == 0:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if kept and frame.shape != first_shape:
                    raise PipelineError(
                        f"frames: frame {i} of '{path}' is {_wh(frame.shape[:2])} but earlier frames are "
                        f"{_wh(first_shape[:2])}; videos that change size are not supported"
                    )
                first_shape = frame.shape
                kept.append(frame)
                selected.append(i)
                report(progress, len(kept), max(expected, len(kept)), f"decoding frame {i}")
            elif not cap.grab():  # skipped frames are grabbed, not decoded
                break
            i += 1
    finally:
        cap.release()
    if i == 0 and not kept:
        raise PipelineError(f"frames: the video '{path}' has no frames (or none that could be decoded)")
    if not kept:
        raise _empty_selection_error(i, skip_first, path)
    frames = torch.empty((len(kept), *first_shape[:2], 3), dtype=torch.float32)
    for k in range(len(kept)):
        frame, kept[k] = kept[k], None  # free each uint8 frame as soon as it is converted
        assert frame is not None
        img = frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)
        frames[k] = torch.from_numpy(_to_float(np.ascontiguousarray(img[:, :, 2::-1])))
    return Clip(
        frames=frames,
        alpha=None,
        names=[f"{i:05d}" for i in selected],
        fps=fps / every_nth if fps > 0 else 0.0,
        source=str(path),
        notes=[],
        selected=selected,
    )


def _load_gif(
    path: Path, frame_cap: int, skip_first: int, every_nth: int, progress: ProgressFn | None
) -> Clip:
    """Fallback for GIFs when OpenCV's video backend cannot open them."""
    try:
        im = Image.open(path)
    except OSError as e:
        raise PipelineError(f"frames: cannot open '{path}' as a GIF: {e}") from e
    with im:
        total = getattr(im, "n_frames", 1)
        selected = _select(total, frame_cap, skip_first, every_nth)
        if not selected:
            raise _empty_selection_error(total, skip_first, path)
        wanted = set(selected)
        arrays: list[np.ndarray] = []
        duration = float(im.info.get("duration") or 0)
        for i, frame in enumerate(ImageSequence.Iterator(im)):
            if i in wanted:
                arrays.append(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)
                report(progress, len(arrays), len(selected), f"decoding frame {i}")
            if i >= selected[-1]:
                break
    fps = 1000.0 / duration / every_nth if duration > 0 else 0.0
    return Clip(
        frames=torch.from_numpy(np.stack(arrays)),
        alpha=None,
        names=[f"{i:05d}" for i in selected],
        fps=fps,
        source=str(path),
        notes=[],
        selected=selected,
    )


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def binarize_mask(array: np.ndarray) -> np.ndarray:
    """Any mask image -> bool ``(H, W)``, True = hole.

    ``(H, W)`` (gray, palette indices, 16-bit): non-zero = hole. ``(H, W, 3)`` coloured masks: any
    non-zero channel = hole. ``(H, W, 4)``: RGB as above, unless RGB is zero everywhere, then alpha > 0.
    ``(H, W, 2)`` (gray + alpha) likewise.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        return a != 0
    if a.ndim != 3:
        raise ValueError(f"a mask image must be (H, W) or (H, W, C), got shape {a.shape}")
    c = a.shape[2]
    if c == 1:
        return a[:, :, 0] != 0
    if c in (2, 4):
        colour = np.any(a[:, :, : c - 1] != 0, axis=2)
        # A black image whose strokes live only in the alpha channel (painted on a transparent layer).
        return colour if colour.any() else a[:, :, c - 1] != 0
    return np.any(a != 0, axis=2)


def read_mask_file(path: Path | str) -> np.ndarray:
    """Read a mask image with PIL (palette indices preserved) -> bool ``(H, W)``, True = hole."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise PipelineError(f"masks: cannot read mask image '{path}' (corrupt or not an image): {e}") from e
    return binarize_mask(array)


def _fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` (H, W)."""
    if mask.shape == tuple(size):
        return mask
    out = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


class _Resized:
    """Collects 'mask of another size' fix-ups, one note per original size (not one per file)."""

    def __init__(self) -> None:
        self.by_size: dict[tuple[int, int], list[str]] = {}

    def add(self, shape: tuple[int, int], name: str) -> None:
        self.by_size.setdefault(shape, []).append(name)

    def notes(self, size: tuple[int, int], notes: list[str]) -> None:
        for shape, names in self.by_size.items():
            which = f"'{names[0]}'" if len(names) == 1 else f"{len(names)} masks ({_short_list(names)})"
            _note(
                notes,
                f"masks: resized {which} from {_wh(shape)} to the frame size {_wh(size)} (nearest neighbour)",
            )


def load_masks(
    source: Path | torch.Tensor | None,
    num_frames: int,
    size: tuple[int, int],
    frame_names: Sequence[str] = (),
    selected: Sequence[int] | None = None,
    alpha: torch.Tensor | None = None,
    invert: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """Masks for ``num_frames`` frames of ``size`` (H, W) -> (masks ``(T, H, W)`` float32 1 = hole, notes).

    ``source``: a folder of masks (matched by file name, or a single static mask, or by order; with
    ``selected`` - the loaded frames' indices in the full source - a folder with one mask per source
    frame also works), a single mask image (static), a ComfyUI MASK tensor ``(B, H, W)`` / ``(H, W)``
    (B == 1 broadcast), or None (holes from ``alpha`` ``(T, H, W)``, transparent = hole, if given;
    else no holes). Masks of another size are resized (nearest) with a note. ``invert`` swaps hole/known.
    """
    t = int(num_frames)
    h, w = int(size[0]), int(size[1])
    notes: list[str] = []
    if isinstance(source, torch.Tensor):
        masks = _masks_from_tensor(source, t, (h, w), notes)
    elif source is None:
        if alpha is None:
            _note(notes, "masks: no mask given; nothing will be filled (every pixel is known)")
            if invert:
                _note(notes, "masks: invert ignored because no mask was given")
            return torch.zeros((t, h, w), dtype=torch.float32), notes
        masks = _masks_from_alpha(alpha, t, (h, w), notes)
    else:
        path = Path(source)
        if not path.exists():
            raise PipelineError(f"masks: '{path}' not found")
        if path.is_dir():
            masks = _masks_from_folder(path, t, (h, w), list(frame_names), selected, notes)
        else:
            resized = _Resized()
            m = read_mask_file(path)
            if m.shape != (h, w):
                resized.add(m.shape, path.name)
            resized.notes((h, w), notes)
            if t > 1:
                _note(
                    notes, f"masks: '{path.name}' is a single mask; used as a static mask for all {t} frames"
                )
            masks = torch.from_numpy(_fit_mask(m, (h, w))).expand(t, h, w)
    masks = masks.to(torch.float32)
    if invert:
        masks = 1.0 - masks
    return masks.contiguous(), notes


def _masks_from_tensor(source: torch.Tensor, t: int, size: tuple[int, int], notes: list[str]) -> torch.Tensor:
    m = source.detach().to("cpu", torch.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise PipelineError(f"masks: expected a MASK of shape (B, H, W), got shape {tuple(source.shape)}")
    b = m.shape[0]
    if b not in (1, t):
        raise PipelineError(
            f"masks: the MASK input has {b} masks but there are {t} frames; "
            "give one static mask or one mask per frame"
        )
    hole = m > 0.5
    if tuple(hole.shape[1:]) != size:
        _note(
            notes,
            f"masks: resized the MASK input from {_wh(tuple(hole.shape[1:]))} to the frame size "
            f"{_wh(size)} (nearest neighbour)",
        )
        hole = torch.from_numpy(np.stack([_fit_mask(x, size) for x in hole.numpy()]))
    if b == 1 and t > 1:
        _note(notes, f"masks: one mask given; used as a static mask for all {t} frames")
    return hole.expand(t, *size)


def _masks_from_alpha(alpha: torch.Tensor, t: int, size: tuple[int, int], notes: list[str]) -> torch.Tensor:
    a = alpha.detach().to("cpu", torch.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, t):
        raise PipelineError(f"masks: the frames' alpha channel has shape {tuple(alpha.shape)} for {t} frames")
    hole = a < 0.5
    if tuple(hole.shape[1:]) != size:
        hole = torch.from_numpy(np.stack([_fit_mask(x, size) for x in hole.numpy()]))
    if hole.any():
        _note(
            notes, "masks: no mask given; using the frames' alpha channel (transparent pixels are the hole)"
        )
    else:
        _note(
            notes,
            "masks: no mask given and the frames' alpha channel is fully opaque; nothing will be filled",
        )
    return hole.expand(t, *size)


def _masks_from_folder(
    folder: Path,
    t: int,
    size: tuple[int, int],
    frame_names: list[str],
    selected: Sequence[int] | None,
    notes: list[str],
) -> torch.Tensor:
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
            _note(
                notes,
                f"masks: '{folder.name}' has a single mask '{files[0].name}'; "
                f"used as a static mask for all {t} frames",
            )
    elif use_names:
        missing = [n for n in frame_names if n not in by_stem]
        if missing:
            raise PipelineError(
                f"masks: {len(missing)} of {t} frames have no mask in '{folder}' "
                f"(no mask for frames {_short_list(missing)}); the folder has {len(files)} masks matched "
                f"to frames by file name, which is neither one static mask nor a mask for every frame"
            )
        plan = [by_stem[n] for n in frame_names]
    else:
        how = "by order" if not frame_names else "by order (their file names do not match the frames')"
        if len(files) == t:
            plan = files
            if frame_names:
                _note(notes, f"masks: matched the {t} masks in '{folder.name}' to the frames {how}")
        elif selected is not None and len(selected) == t and t > 0 and max(selected) < len(files):
            plan = [files[i] for i in selected]
            _note(
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

    out = torch.empty((t, *size), dtype=torch.bool)
    resized = _Resized()
    cache: dict[Path, torch.Tensor] = {}
    for k, f in enumerate(plan):
        if f not in cache:
            m = read_mask_file(f)
            if m.shape != size:
                resized.add(m.shape, f.name)
            cache = {f: torch.from_numpy(_fit_mask(m, size))}  # plans repeat a file only consecutively
        out[k] = cache[f]
    resized.notes(size, notes)
    return out


# --------------------------------------------------------------------------------------------------
# Resizing and edited keyframes
# --------------------------------------------------------------------------------------------------


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 -> ``size`` (h, w): area averaging to shrink, bicubic to enlarge, clamped."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h <= image.shape[0] and w <= image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).reshape(h, w, *image.shape[2:])


def _resize_mask_conservative(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` (h, w) bool, where an output pixel is a hole if it touches any hole.

    Plain nearest-neighbour downscaling can drop thin holes entirely; area averaging then ``> 0`` cannot.
    """
    h, w = size
    m = mask.astype(np.float32)
    if m.shape == (h, w):
        return m > 0
    shrink = h < m.shape[0] or w < m.shape[1]
    out = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    return out > 0


def _round8(x: float) -> int:
    return max(8, int(math.floor(x / 8.0 + 0.5)) * 8)


def resize_clip(
    frames: torch.Tensor, masks: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Resize frames ``(T, H, W, 3)`` and masks ``(T, H, W)`` to ``width`` x ``height``.

    0 for one side keeps the aspect ratio (rounded to the nearest multiple of 8); both 0 = unchanged.
    Masks are resized conservatively (a hole never disappears). Returns (frames, masks, notes).
    """
    for name, value in (("width", width), ("height", height)):
        v = _check_int(value, name, 0, "use 0 (keep the aspect ratio) or a multiple of 8")
        if v % 8:
            lo = max(8, v // 8 * 8)
            raise PipelineError(f"{name}: {v} is not a multiple of 8; use for example {lo} or {lo + 8}")
    width, height = int(width), int(height)
    if frames.ndim != 4 or masks.ndim != 3 or tuple(frames.shape[:3]) != tuple(masks.shape):
        raise ValueError(f"frames {tuple(frames.shape)} and masks {tuple(masks.shape)} do not match")
    notes: list[str] = []
    t, h0, w0 = frames.shape[:3]
    if width == 0 and height == 0:
        return frames, masks, notes
    if height == 0:
        height = _round8(h0 * width / w0)
        _note(notes, f"height: 0, so it was set to {height} to keep the aspect ratio of {_wh((h0, w0))}")
    elif width == 0:
        width = _round8(w0 * height / h0)
        _note(notes, f"width: 0, so it was set to {width} to keep the aspect ratio of {_wh((h0, w0))}")
    if (height, width) == (h0, w0):
        return frames, masks, notes
    f_np = frames.detach().to("cpu", torch.float32).numpy()
    m_np = masks.detach().to("cpu", torch.float32).numpy()
    new_f = torch.empty((t, height, width, 3), dtype=torch.float32)
    new_m = torch.empty((t, height, width), dtype=torch.float32)
    for i in range(t):
        new_f[i] = torch.from_numpy(_resize_image(f_np[i], (height, width)))
        new_m[i] = torch.from_numpy(_resize_mask_conservative(m_np[i], (height, width)))
    _note(notes, f"resized frames and masks from {_wh((h0, w0))} to {_wh((height, width))}")
    return new_f, new_m, notes


def apply_edited_keyframes(
    frames: torch.Tensor,
    masks: torch.Tensor,
    edited: torch.Tensor,
    keyframe_indices: list[int],
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    """Replace frames at the first K keyframes by the K ``edited`` images ``(K, H', W', 3)``.

    Edited images are resized to the frame size if needed; their masks become 0 (fully known).
    Returns new (frames ``(T, H, W, 3)``, masks ``(T, H, W)``, edited indices, notes); inputs are untouched.
    """
    notes: list[str] = []
    e = edited.detach().to("cpu", torch.float32)
    if e.ndim == 3:
        e = e[None]
    if e.ndim != 4 or e.shape[-1] not in (3, 4):
        raise PipelineError(
            f"edited_keyframes: expected images (K, H, W, 3), got shape {tuple(edited.shape)}"
        )
    if e.shape[-1] == 4:
        e = e[..., :3]
        _note(notes, "edited_keyframes: dropped the alpha channel of the edited images")
    k = e.shape[0]
    kf = [int(i) for i in keyframe_indices]
    if k > len(kf):
        raise PipelineError(
            f"edited_keyframes: {k} edited images but only {len(kf)} keyframes "
            f"({_short_list(kf) or 'none'}); give at most one edited image per keyframe, in keyframe order"
        )
    t, h, w = frames.shape[:3]
    targets = kf[:k]
    bad = [i for i in targets if not 0 <= i < t]
    if bad:
        raise PipelineError(f"keyframes: {_short_list(bad)} out of range for {t} frames (0..{t - 1})")
    new_frames = frames.detach().clone()
    new_masks = masks.detach().clone()
    for j, idx in enumerate(targets):
        img = e[j]
        if tuple(img.shape[:2]) != (h, w):
            _note(
                notes,
                f"edited_keyframes: resized edited image {j} from {_wh(tuple(img.shape[:2]))} "
                f"to the frame size {_wh((h, w))} (for keyframe {idx})",
            )
            img = torch.from_numpy(_resize_image(img.numpy(), (h, w)))
        new_frames[idx] = img.to(new_frames.dtype)
        new_masks[idx] = 0
    if 0 < k < len(kf):
        _note(
            notes,
            f"edited_keyframes: {k} edited images replace keyframes {_short_list(targets)}; "
            f"keyframes {_short_list(kf[k:])} keep the original frame",
        )
    return new_frames, new_masks, targets, notes


# --------------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------------


def fingerprint_paths(*paths: Path | str | None) -> str:
    """A hash of the names, sizes and modification times (ns) of files and folders (recursively).

    Changes when a file is edited, added, removed or renamed; never raises (missing paths count by name).
    """
    h = hashlib.sha256()

    def stat_line(p: Path, label: str) -> None:
        try:
            st = p.stat()
            h.update(f"{label}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode("utf-8", "replace"))
        except OSError:
            h.update(f"{label}\0?\n".encode("utf-8", "replace"))

    for raw in paths:
        if raw is None:
            h.update(b"<none>\n")
            continue
        p = Path(raw)
        try:
            p = p.resolve()
        except (OSError, RuntimeError):
            pass
        h.update(f"<path>{p}\n".encode("utf-8", "replace"))
        try:
            if p.is_dir():
                for root, dirs, files in os.walk(p):
                    dirs.sort()
                    for name in sorted(files):
                        full = Path(root) / name
                        stat_line(full, full.relative_to(p).as_posix())
            else:
                stat_line(p, p.name)
        except OSError:
            h.update(b"?\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _to_bgr_u8(frame: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> (H, W, 3) uint8 BGR for OpenCV."""
    a = frame.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    return np.ascontiguousarray((a[:, :, ::-1] * 255.0 + 0.5).astype(np.uint8))


def _temp_name(path: Path) -> Path:
    # Same folder (so os.replace is atomic), same extension (encoders pick the format from it).
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def save_frames(frames: torch.Tensor, folder: Path, names: Sequence[str], ext: str = ".png") -> list[Path]:
    """Write frames ``(T, H, W, 3)`` as ``folder/<name><ext>``; returns the paths.

    All images are written to temporary names first and renamed at the end, so a failure (or a
    cancel) leaves no partial set of outputs.
    """
    folder = Path(folder)
    ext = ext if ext.startswith(".") else "." + ext
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(frames.shape)}")
    if len(names) != frames.shape[0]:
        raise ValueError(f"{len(names)} names for {frames.shape[0]} frames")
    targets = [folder / f"{Path(str(n)).name}{ext}" for n in names]  # no path separators from names
    if len(set(targets)) != len(targets):
        raise ValueError("frame names are not unique")
    folder.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() in (".jpg", ".jpeg") else []
    temps: list[Path] = []
    try:
        for i, target in enumerate(targets):
            ok, buf = cv2.imencode(ext, _to_bgr_u8(frames[i]), params)
            if not ok:
                raise PipelineError(f"cannot encode frame '{target.name}' as {ext}")
            tmp = _temp_name(target)
            temps.append(tmp)
            buf.tofile(str(tmp))
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
        temps = []
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return targets


def _write_video_file(frames: torch.Tensor, path: Path, fps: float, size: tuple[int, int]) -> bool:
    """Encode to ``path`` at ``size`` (h, w) (cropping frames if smaller); False if the encoder failed."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    try:
        if not writer.isOpened():
            return False
        for i in range(frames.shape[0]):
            writer.write(_to_bgr_u8(frames[i, :h, :w]))
    finally:
        writer.release()
    return path.is_file() and path.stat().st_size > 0


def write_video(frames: torch.Tensor, path: Path, fps: float) -> Path:
    """Write frames ``(T, H, W, 3)`` to an mp4v video (``.mp4`` added if there is no video extension).

    fps <= 0 means 24. Written to a temporary file first, then renamed: no half-written videos.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _MP4V_CONTAINERS:
        # "out.gif" -> "out.mp4" (mp4v cannot go in a GIF/WebM); "out" -> "out.mp4".
        path = path.with_suffix(".mp4") if suffix in VIDEO_EXTENSIONS else path.with_name(path.name + ".mp4")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T > 0, got {tuple(frames.shape)}")
    fps = float(fps) if fps and fps > 0 else 24.0
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = int(frames.shape[1]), int(frames.shape[2])
    tmp = _temp_name(path)
    try:
        ok = _write_video_file(frames, tmp, fps, (h, w))
        if not ok and (h % 2 or w % 2) and h > 1 and w > 1:
            # Some encoders reject odd sizes: drop the last row/column rather than fail.
            logger.info("write_video: retrying %s with an even frame size", path.name)
            tmp.unlink(missing_ok=True)
            ok = _write_video_file(frames, tmp, fps, (h - h % 2, w - w % 2))
        if not ok:
            raise PipelineError(f"cannot write the video '{path}' (the mp4v encoder failed)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
