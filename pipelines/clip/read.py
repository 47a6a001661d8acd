"""Decoding images and clips: a folder of frames, a video file, a GIF or a single image."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageSequence

from ..checks import check_int, check_shape
from ..errors import PipelineError, wh
from ..progress import ProgressFn, report
from .paths import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images


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
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as e:  # e.g. a header over OpenCV's pixel limit (CV_IO_MAX_IMAGE_PIXELS)
        too_big = "MAX_IMAGE_PIXELS" in str(e)
        why = "its size is over the image reader's pixel limit" if too_big else "OpenCV cannot decode it"
        raise PipelineError(f"{what}: cannot read image '{path}' ({why})") from e
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


def _select(total: int, frame_cap: int, skip_first: int, every_nth: int) -> list[int]:
    """Indices kept: skip the first ``skip_first``, keep every ``every_nth``, then cap."""
    keep = list(range(skip_first, total, every_nth))
    return keep[:frame_cap] if frame_cap > 0 else keep


def clip_from_images(
    images: torch.Tensor, frame_cap: int = 0, skip_first: int = 0, every_nth: int = 1
) -> Clip:
    """A :class:`Clip` from an IMAGE batch ``(B, H, W, 3|4)`` (a 4th channel is the alpha), with the
    same selection as :func:`load_frames`; frames are named by their index in the batch."""
    frame_cap = check_int(frame_cap, "frame_cap", 0, "use 0 for no limit or a positive number of frames")
    skip_first = check_int(skip_first, "skip_first", 0, "use 0 or a positive number of frames to skip")
    every_nth = check_int(every_nth, "every_nth", 1, "use 1 to load every frame, 2 for every other, ...")
    check_shape(images, "B,H,W,3|4", "images")
    total = int(images.shape[0])
    selected = _select(total, frame_cap, skip_first, every_nth)
    if not selected:
        raise PipelineError(
            f"images: skip_first={skip_first}, every_nth={every_nth} leave no frame of {total}"
        )
    alpha = images[..., 3] if images.shape[-1] == 4 else None
    return Clip(
        frames=images[selected, ..., :3].float().clone(),
        alpha=None if alpha is None else alpha[selected].float().clone(),
        names=[f"{i:05d}" for i in selected],
        fps=0.0,
        source="IMAGE input",
        notes=[],
        selected=selected,
    )


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
    frame_cap = check_int(frame_cap, "frame_cap", 0, "use 0 for no limit or a positive number of frames")
    skip_first = check_int(skip_first, "skip_first", 0, "use 0 or a positive number of frames to skip")
    every_nth = check_int(every_nth, "every_nth", 1, "use 1 to load every frame, 2 for every other, ...")
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
                f"frames: '{f.name}' is {wh(rgb.shape[:2])} but '{first.name}' is "
                f"{wh(tuple(frames.shape[1:3]))}; all frames in '{source}' must have the same size"
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
                        f"frames: frame {i} of '{path}' is {wh(frame.shape[:2])} but earlier frames are "
                        f"{wh(first_shape[:2])}; videos that change size are not supported"
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
