"""Masks of a clip (1 = hole): from a folder, one static image, a MASK batch or the alpha channel.

Every repair of the user's masks (a wrong size, a palette or RGB image, one mask for all frames) is
logged and returned as a note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..checks import check_shape
from ..errors import PipelineError, note, short_list, wh
from .paths import IMAGE_EXTENSIONS, fingerprint_paths, list_images


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


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
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
            which = f"'{names[0]}'" if len(names) == 1 else f"{len(names)} masks ({short_list(names)})"
            note(
                notes,
                f"masks: resized {which} from {wh(shape)} to the frame size {wh(size)} (nearest neighbour)",
            )


class MaskSource:
    """The masks of a clip (True = hole) read on demand at the frames' size ``(H, W)``.

    Built by :func:`open_masks`: frame i's mask is one file of a folder (a static mask repeats one
    file), a slice of a MASK batch, the frame's alpha channel (transparent = hole) or nothing.
    ``read(i)`` decodes one mask; consecutive frames sharing a file decode it once.
    """

    def __init__(
        self,
        count: int,
        size: tuple[int, int],
        files: list[Path] | None = None,
        tensor: torch.Tensor | None = None,
        alpha: Callable[[int], np.ndarray | None] | None = None,
        invert: bool = False,
    ) -> None:
        self.count, self.size, self.files, self.tensor, self.alpha = count, size, files, tensor, alpha
        self.invert = invert
        self._last: tuple[Path, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> torch.Tensor:
        size = self.size
        if self.files is not None:
            f = self.files[i]
            if self._last is None or self._last[0] != f:
                self._last = (f, fit_mask(read_mask_file(f), size))
            hole = self._last[1]
        elif self.tensor is not None:
            hole = fit_mask((self.tensor[i if self.tensor.shape[0] > 1 else 0] > 0.5).numpy(), size)
        elif self.alpha is not None:
            a = self.alpha(i)
            hole = np.zeros(size, bool) if a is None else fit_mask(a < 0.5, size)
        else:
            hole = np.zeros(size, bool)
        out = torch.from_numpy(np.ascontiguousarray(hole))
        return ~out if self.invert else out

    def fingerprint(self) -> str:
        if self.files is not None:
            return fingerprint_paths(*self.files) + f"|{self.invert}"
        if self.tensor is not None:
            return hashlib.sha256(self.tensor.numpy().tobytes()).hexdigest() + f"|{self.invert}"
        return f"{'alpha' if self.alpha is not None else 'none'}|{self.count}|{self.invert}"


def open_masks(
    source: Path | torch.Tensor | None,
    num_frames: int,
    size: tuple[int, int],
    frame_names: Sequence[str] = (),
    selected: Sequence[int] | None = None,
    alpha: torch.Tensor | Callable[[int], np.ndarray | None] | None = None,
    invert: bool = False,
) -> tuple[MaskSource, list[str]]:
    """The masks of ``num_frames`` frames of ``size`` (H, W), read on demand; and the notes.

    ``source``: a folder of masks (matched by file name, or a single static mask, or by order; with
    ``selected`` - the frames' indices in the full source - a folder with one mask per source frame
    also works), a single mask image (static), a ComfyUI MASK tensor ``(B, H, W)`` / ``(H, W)``
    (B == 1 broadcast), or None (holes from ``alpha``: an ``(T, H, W)`` tensor or a function of the
    frame index, transparent = hole; else no holes). Masks of another size are resized (nearest)
    with a note (sizes are read from the files' headers). ``invert`` swaps hole/known.
    """
    t = int(num_frames)
    h, w = int(size[0]), int(size[1])
    notes: list[str] = []
    if isinstance(source, torch.Tensor):
        m = _tensor_masks(source, t, (h, w), notes)
        return MaskSource(t, (h, w), tensor=m, invert=invert), notes
    if source is None:
        if alpha is None:
            note(notes, "masks: no mask given; nothing will be filled (every pixel is known)")
            if invert:
                note(notes, "masks: invert ignored because no mask was given")
            return MaskSource(t, (h, w)), notes
        return MaskSource(t, (h, w), alpha=_alpha_reader(alpha, t, (h, w), notes), invert=invert), notes
    path = Path(source)
    if not path.exists():
        raise PipelineError(f"masks: '{path}' not found")
    if path.is_dir():
        plan = _folder_plan(path, t, list(frame_names), selected, notes)
    else:
        plan = [path] * t
        if t > 1:
            note(notes, f"masks: '{path.name}' is a single mask; used as a static mask for all {t} frames")
    resized = _Resized()
    for f in dict.fromkeys(plan):  # each file once, in order
        shape = mask_size(f)
        if shape != (h, w):
            resized.add(shape, f.name)
    resized.notes((h, w), notes)
    return MaskSource(t, (h, w), files=plan, invert=invert), notes


def load_masks(
    source: Path | torch.Tensor | None,
    num_frames: int,
    size: tuple[int, int],
    frame_names: Sequence[str] = (),
    selected: Sequence[int] | None = None,
    alpha: torch.Tensor | None = None,
    invert: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """All masks of a clip at once (see :func:`open_masks`): (masks ``(T, H, W)`` float32 1 = hole, notes)."""
    masks, notes = open_masks(source, num_frames, size, frame_names, selected, alpha, invert)
    out = torch.empty((int(num_frames), int(size[0]), int(size[1])), dtype=torch.float32)
    for k in range(int(num_frames)):
        out[k] = masks.read(k)
    return out, notes


def mask_size(path: Path) -> tuple[int, int]:
    """(height, width) of a mask image from its header; PipelineError for files that are not images."""
    from .read import image_size

    return image_size(path, "masks")


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
) -> Callable[[int], np.ndarray | None]:
    if callable(alpha):
        note(notes, "masks: no mask given; the frames' alpha channel gives the holes (transparent pixels)")
        return alpha
    a = alpha.detach().to("cpu", torch.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, t):
        raise PipelineError(f"masks: the frames' alpha channel has shape {tuple(alpha.shape)} for {t} frames")
    if bool((a < 0.5).any()):
        note(notes, "masks: no mask given; using the frames' alpha channel (transparent pixels are the hole)")
    else:
        note(
            notes,
            "masks: no mask given and the frames' alpha channel is fully opaque; nothing will be filled",
        )
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
