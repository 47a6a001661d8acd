"""Preparing a clip for the methods: one path from the user's inputs to frames, masks and keyframes.

Used by Load Keyframes and by the CLI's ``remove``: frames (a folder, a video file or an IMAGE batch,
with skip/every-nth/cap), masks (a folder, one image, a MASK batch or the alpha channel), a resize,
the keyframe list and artist-edited keyframes, with every fix-up returned as a note.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checks import check_int, check_shape
from ..errors import PipelineError, note, wh
from ..ops import fit_size, resize_frame, resize_mask
from ..progress import ProgressFn
from ..types import Keyframes
from .keyframes import edited_images, parse_keyframes
from .lazy import LazyClip
from .masks import check_holes, open_masks
from .read import Clip, FrameSource, ImageFiles, TensorFrames, open_frames


def check_resize(width: int, height: int) -> None:
    """Raise PipelineError naming ``width`` / ``height`` unless each is 0 or a multiple of 8."""
    for name, value in (("width", width), ("height", height)):
        v = check_int(value, name, 0, "use 0 (keep the aspect ratio) or a multiple of 8")
        if v % 8:
            lo = max(8, v // 8 * 8)
            raise PipelineError(f"{name}: {v} is not a multiple of 8; use for example {lo} or {lo + 8}")


def resize_clip(
    frames: torch.Tensor, masks: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Resize frames ``(T, H, W, 3)`` and masks ``(T, H, W)`` to ``width`` x ``height``.

    0 for one side keeps the aspect ratio (rounded to the nearest multiple of 8); both 0 = unchanged.
    Masks are resized conservatively (a hole never disappears). Returns (frames, masks, notes).
    """
    check_resize(width, height)
    width, height = int(width), int(height)
    check_shape(masks, "T,H,W", "masks", known=check_shape(frames, "T,H,W,3", "frames"))
    notes: list[str] = []
    t, h0, w0 = frames.shape[:3]
    if width == 0 and height == 0:
        return frames, masks, notes
    new_h, new_w = fit_size(h0, w0, width, height, 8)
    if height == 0:
        note(notes, f"height: 0, so it was set to {new_h} to keep the aspect ratio of {wh((h0, w0))}")
    elif width == 0:
        note(notes, f"width: 0, so it was set to {new_w} to keep the aspect ratio of {wh((h0, w0))}")
    if (new_h, new_w) == (h0, w0):
        return frames, masks, notes
    f_np = frames.detach().to("cpu", torch.float32).numpy()
    new_f = torch.empty((t, new_h, new_w, 3), dtype=torch.float32)
    for i in range(t):
        new_f[i] = torch.from_numpy(resize_frame(f_np[i], (new_h, new_w)))
    new_m = resize_mask(masks, (new_h, new_w)).float()
    note(notes, f"resized frames and masks from {wh((h0, w0))} to {wh((new_h, new_w))}")
    return new_f, new_m, notes


@dataclass
class PreparedClip:
    """frames ``(T, H, W, 3)`` and masks ``(T, H, W)`` (1 = hole) ready for the methods, the clip's
    :class:`Keyframes` (indices, size, fps, source, names, edited) and the fix-ups made on the way."""

    frames: torch.Tensor
    masks: torch.Tensor
    keyframes: Keyframes
    notes: list[str] = field(default_factory=list)


def _resize_note(h0: int, w0: int, width: int, height: int, notes: list[str]) -> tuple[int, int]:
    """The size a resize to ``width`` x ``height`` gives (multiples of 8, 0 keeps the aspect ratio)."""
    check_resize(width, height)
    if width == 0 and height == 0:
        return h0, w0
    new_h, new_w = fit_size(h0, w0, int(width), int(height), 8)
    if height == 0:
        note(notes, f"height: 0, so it was set to {new_h} to keep the aspect ratio of {wh((h0, w0))}")
    elif width == 0:
        note(notes, f"width: 0, so it was set to {new_w} to keep the aspect ratio of {wh((h0, w0))}")
    if (new_h, new_w) != (h0, w0):
        note(notes, f"resized frames and masks from {wh((h0, w0))} to {wh((new_h, new_w))}")
    return new_h, new_w


def open_clip(
    frames: Path | io.BytesIO | torch.Tensor,
    masks: Path | torch.Tensor | None = None,
    keyframes: str = "0",
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    width: int = 0,
    height: int = 0,
    invert_mask: bool = False,
    edited: torch.Tensor | Sequence[torch.Tensor] | None = None,
    mask_threshold: float = 0.5,
    allow_large_holes: bool = False,
    progress: ProgressFn | None = None,
    holes: bool = True,
) -> LazyClip:
    """The clip of the user's inputs, read on demand (nothing is decoded but headers and the edited
    keyframes).

    frames: a resolved path (folder, video, image), a video stream (ComfyUI's VIDEO) or an IMAGE
    batch ``(B, H, W, 3|4)`` (an alpha channel can give the holes). masks: a resolved path, a MASK
    batch (one per frame, one for all, or one per frame of the whole IMAGE batch before the
    selection) or None (alpha, else no hole). edited: artist-edited images replacing the first
    keyframes in order: a batch ``(K, H', W', 3)`` or a list of images of any sizes (each is resized
    to the frame size). The selection (skip_first, every_nth, frame_cap), the resize (width,
    height, multiples of 8; 0 keeps the aspect ratio) and the keyframe syntax are as
    :func:`load_frames`, :func:`resize_clip` and :func:`parse_keyframes`. mask_threshold: where
    mask values are binarised (see :func:`~.masks.open_masks`; the mask files are read once for
    their range). ``holes``: read the final masks once more for :func:`~.masks.check_holes` (a frame
    95 % hole or more is refused unless ``allow_large_holes``). ``progress`` reports both passes.
    """
    src = open_frames(frames, frame_cap, skip_first, every_nth)
    T, (H, W) = len(src), src.size
    notes: list[str] = []
    msrc = masks
    if isinstance(masks, torch.Tensor) and isinstance(frames, torch.Tensor):
        if masks.ndim == 3 and masks.shape[0] == frames.shape[0] != T:
            msrc = masks[src.selected]  # a MASK batch aligned with the full IMAGE batch
    alpha = _alpha_of(src) if msrc is None and _has_alpha(src) else None
    mask_source, mnotes = open_masks(
        msrc, T, (H, W), frame_names=src.names, selected=src.selected, alpha=alpha, invert=invert_mask,
        threshold=mask_threshold, progress=progress,
    )  # fmt: skip
    notes += mnotes
    size = _resize_note(H, W, width, height, notes)
    idx = parse_keyframes(keyframes, T)
    edits: dict[int, torch.Tensor] = {}
    if edited is not None:
        if not isinstance(edited, torch.Tensor):
            edited = torch.stack(
                [torch.from_numpy(resize_frame(e[..., :3].float().numpy(), size)) for e in edited]
            )
        edits, enotes = edited_images(edited, idx, T, size)
        notes += enotes
    kf = Keyframes(
        indices=idx, size=size, fps=src.fps, source=src.source, num_frames=T, edited=list(edits),
        names=list(src.names),
    )  # fmt: skip
    clip = LazyClip(src, mask_source, size, kf, edits, notes)
    if holes:
        notes += check_holes(
            clip.masks(), src.names, allow_large_holes, invert_mask, skip=list(edits), progress=progress
        )
    return clip


def _has_alpha(src: FrameSource) -> bool:
    """Whether the frames carry an alpha channel (an IMAGE batch's 4th channel, or the first image
    file's mode, read from its header)."""
    if isinstance(src, TensorFrames):
        return src.images.shape[-1] == 4
    if isinstance(src, ImageFiles):
        from PIL import Image

        with Image.open(src.files[src.selected[0]]) as im:
            return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    return False


def _alpha_of(src: FrameSource):
    """A function giving frame i's alpha channel (or None) without keeping the frames."""

    def alpha(i: int):
        return src.read(i)[1]

    return alpha


def prepare_clip(
    frames: Path | io.BytesIO | torch.Tensor,
    masks: Path | torch.Tensor | None = None,
    keyframes: str = "0",
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    width: int = 0,
    height: int = 0,
    invert_mask: bool = False,
    edited: torch.Tensor | Sequence[torch.Tensor] | None = None,
    progress: ProgressFn | None = None,
    check_memory: bool = True,
    mask_threshold: float = 0.5,
    allow_large_holes: bool = False,
) -> PreparedClip:
    """Frames, masks and keyframes of a clip from the user's inputs, all decoded (see
    :func:`open_clip` for the inputs); the decoded masks are checked by :func:`~.masks.check_holes`.
    Refused before decoding when the batch would not fit in the memory that is free
    (``check_memory``)."""
    clip = open_clip(
        frames, masks, keyframes, frame_cap, skip_first, every_nth, width, height, invert_mask, edited,
        mask_threshold=mask_threshold, progress=progress, holes=False,
    )  # fmt: skip
    f, m = clip.materialize(progress=progress, check_memory=check_memory)
    notes = clip.notes + check_holes(
        m, clip.names, allow_large_holes, invert_mask, skip=clip.keyframes.edited
    )
    return PreparedClip(f, m, clip.keyframes, notes)


__all__ = ["Clip", "LazyClip", "PreparedClip", "check_resize", "open_clip", "prepare_clip", "resize_clip"]
