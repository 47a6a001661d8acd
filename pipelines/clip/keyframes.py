"""Keyframes of a clip: the keyframe-list syntax and artist-edited keyframes."""

from __future__ import annotations

import re

import torch

from ..checks import check_shape
from ..errors import PipelineError, note, short_list, wh
from ..ops import resize_frame

_INT_RE = re.compile(r"-?\d+")
_RANGE_RE = re.compile(r"(-?\d+)\s*-\s*(-?\d+)(?:\s*:\s*(-?\d+))?")


_SYNTAX = "expected indices like '0,20,40', ranges like '0-60:20' or '10-14'"


def _keyframe_tokens(text: str) -> list[tuple[str, int, int | None, int]]:
    """The tokens of a keyframe list: (token, start, end or None for a single index, step), indices
    as written (negative = from the end). Raises PipelineError on anything that is not an index or a
    range with a step of 1 or more, whatever the clip's length."""
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):  # a pasted Python/JSON list
        text = text[1:-1]
    out: list[tuple[str, int, int | None, int]] = []
    for raw in re.split(r"[,;]", text):
        token = raw.strip()
        if not token:
            continue  # tolerate "0,20," and "0,,20"
        # "0 20 40" (spaces instead of commas) is split further; "0 - 60 : 20" is one range.
        parts = [token] if _RANGE_RE.fullmatch(token) or _INT_RE.fullmatch(token) else token.split()
        for part in parts:
            if _INT_RE.fullmatch(part):
                out.append((part, int(part), None, 1))
                continue
            m = _RANGE_RE.fullmatch(part)
            if m is None:
                raise PipelineError(f"keyframes: '{part}' is not a frame index or range; {_SYNTAX}")
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step < 1:
                raise PipelineError(
                    f"keyframes: '{part}' has step {step}; the step must be 1 or more; {_SYNTAX}"
                )
            out.append((part, int(m.group(1)), int(m.group(2)), step))
    return out


def check_keyframe_syntax(text: str) -> None:
    """Raise PipelineError naming ``keyframes`` when ``text`` is not a keyframe list (checked before
    the clip's length is known: out-of-range indices are found by :func:`parse_keyframes`)."""
    _keyframe_tokens(text)


def parse_keyframes(text: str, num_frames: int) -> list[int]:
    """Parse a keyframe list such as ``"0,20,40"``, ``"0-60:20"``, ``"10-14"`` or ``"0,-1"``.

    Ranges are ``start-end`` (inclusive) with an optional ``:step``; negative indices count from the
    end (``-1`` is the last frame). Returns sorted unique indices in ``[0, num_frames)``; ``""`` -> ``[]``.
    Raises PipelineError naming ``keyframes`` and the offending token.
    """
    n = int(num_frames)
    valid = f"valid indices are 0..{n - 1} (or -{n}..-1 counting from the end)"
    try:
        tokens = _keyframe_tokens(text)
    except PipelineError as e:
        raise PipelineError(f"{e}; {valid}" if n > 0 else str(e)) from None
    if not tokens:
        return []
    if n <= 0:
        shown = (text or "").strip()
        raise PipelineError(f"keyframes: '{shown}' given, but there are no frames to pick keyframes from")

    def bad(token: str, why: str) -> PipelineError:
        return PipelineError(f"keyframes: '{token}' {why}; {_SYNTAX}; {valid}")

    def index(i: int, token: str) -> int:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise bad(token, f"refers to frame {i}, which does not exist ({n} frames)")
        return j

    result: set[int] = set()
    for token, first, last, step in tokens:
        if last is None:
            result.add(index(first, token))
            continue
        start, end = index(first, token), index(last, token)
        if start > end:
            raise bad(token, f"is a range that goes backwards (frame {start} to {end})")
        result.update(range(start, end + 1, step))
    return sorted(result)


def edited_images(
    edited: torch.Tensor, keyframe_indices: list[int], num_frames: int, size: tuple[int, int]
) -> tuple[dict[int, torch.Tensor], list[str]]:
    """The K ``edited`` images ``(K, H', W', 3)`` of the first K keyframes, by frame index, at the
    frame ``size`` (resized if needed, alpha dropped), and the notes."""
    notes: list[str] = []
    e = edited.detach().to("cpu", torch.float32)
    if e.ndim == 3:
        e = e[None]
    check_shape(e, "K,H,W,3|4", "edited_keyframes")
    if e.shape[-1] == 4:
        e = e[..., :3]
        note(notes, "edited_keyframes: dropped the alpha channel of the edited images")
    k = e.shape[0]
    kf = [int(i) for i in keyframe_indices]
    if k > len(kf):
        raise PipelineError(
            f"edited_keyframes: {k} edited images but only {len(kf)} keyframes "
            f"({short_list(kf) or 'none'}); give at most one edited image per keyframe, in keyframe order"
        )
    t, (h, w) = int(num_frames), size
    targets = kf[:k]
    bad = [i for i in targets if not 0 <= i < t]
    if bad:
        raise PipelineError(f"keyframes: {short_list(bad)} out of range for {t} frames (0..{t - 1})")
    out: dict[int, torch.Tensor] = {}
    for j, idx in enumerate(targets):
        img = e[j]
        if tuple(img.shape[:2]) != (h, w):
            note(
                notes,
                f"edited_keyframes: resized edited image {j} from {wh(tuple(img.shape[:2]))} "
                f"to the frame size {wh((h, w))} (for keyframe {idx})",
            )
            img = torch.from_numpy(resize_frame(img.numpy(), (h, w)))
        out[idx] = img.contiguous()
    if 0 < k < len(kf):
        note(
            notes,
            f"edited_keyframes: {k} edited images replace keyframes {short_list(targets)}; "
            f"keyframes {short_list(kf[k:])} keep the original frame",
        )
    return out, notes


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
    t, h, w = frames.shape[:3]
    images, notes = edited_images(edited, keyframe_indices, t, (h, w))
    new_frames = frames.detach().clone()
    new_masks = masks.detach().clone()
    for idx, img in images.items():
        new_frames[idx] = img.to(new_frames.dtype)
        new_masks[idx] = 0
    return new_frames, new_masks, list(images), notes
