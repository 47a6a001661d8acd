"""Preparing a clip for the methods: one path from the user's inputs to frames, masks and keyframes.

Used by Load Keyframes and by the CLI's ``remove``: frames (a folder, a video file or an IMAGE batch,
with skip/every-nth/cap), masks (a folder, one image, a MASK batch or the alpha channel), a resize,
the keyframe list and artist-edited keyframes, with every fix-up returned as a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checks import check_int, check_shape
from ..errors import PipelineError, note, wh
from ..ops import fit_size, resize_frame, resize_mask
from ..progress import ProgressFn
from ..types import Keyframes
from .keyframes import apply_edited_keyframes, parse_keyframes
from .masks import check_holes, load_masks
from .read import Clip, clip_from_images, load_frames


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


def prepare_clip(
    frames: Path | torch.Tensor,
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
    mask_threshold: float = 0.5,
    allow_large_holes: bool = False,
) -> PreparedClip:
    """Frames, masks and keyframes of a clip from the user's inputs.

    frames: a resolved path (folder, video, image) or an IMAGE batch ``(B, H, W, 3|4)`` (an alpha
    channel can give the holes). masks: a resolved path, a MASK batch (one per frame, one for all, or
    one per frame of the whole IMAGE batch before the selection) or None (alpha, else no hole).
    edited: artist-edited images replacing the first keyframes in order: a batch ``(K, H', W', 3)`` or
    a list of images of any sizes (each is resized to the frame size). The selection
    (skip_first, every_nth, frame_cap), the resize (width, height, multiples of 8; 0 keeps the
    aspect ratio) and the keyframe syntax are as :func:`load_frames`, :func:`resize_clip` and
    :func:`parse_keyframes`. mask_threshold: where mask values are binarised (see
    :func:`load_masks`); the final masks are checked by :func:`check_holes` (a frame 95 % hole or more
    is refused unless ``allow_large_holes``).
    """
    if isinstance(frames, torch.Tensor):
        clip = clip_from_images(frames, frame_cap, skip_first, every_nth)
    else:
        clip = load_frames(frames, frame_cap, skip_first, every_nth, progress)
    notes = list(clip.notes)
    T, H, W = clip.frames.shape[:3]
    msrc = masks
    if isinstance(masks, torch.Tensor) and isinstance(frames, torch.Tensor):
        if masks.ndim == 3 and masks.shape[0] == frames.shape[0] != T:
            msrc = masks[clip.selected]  # a MASK batch aligned with the full IMAGE batch
    m, mnotes = load_masks(
        msrc,
        T,
        (H, W),
        frame_names=clip.names,
        selected=clip.selected,
        alpha=clip.alpha,
        invert=invert_mask,
        threshold=mask_threshold,
    )
    notes += mnotes
    out_frames, m, rnotes = resize_clip(clip.frames, m, width, height)
    notes += rnotes
    idx = parse_keyframes(keyframes, T)
    edited_idx: list[int] = []
    if edited is not None:
        if not isinstance(edited, torch.Tensor):
            size = tuple(out_frames.shape[1:3])
            edited = torch.stack(
                [torch.from_numpy(resize_frame(e[..., :3].float().numpy(), size)) for e in edited]
            )
        out_frames, m, edited_idx, enotes = apply_edited_keyframes(out_frames, m, edited, idx)
        notes += enotes
    notes += check_holes(m, clip.names, allow_large_holes, invert_mask, skip=edited_idx)
    kf = Keyframes(
        indices=idx,
        size=(int(out_frames.shape[1]), int(out_frames.shape[2])),
        fps=clip.fps,
        source=clip.source,
        num_frames=T,
        edited=edited_idx,
        names=list(clip.names),
    )
    return PreparedClip(out_frames, m, kf, notes)


__all__ = ["Clip", "PreparedClip", "check_resize", "prepare_clip", "resize_clip"]
