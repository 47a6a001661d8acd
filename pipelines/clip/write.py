"""Writing results: frames under their input names and an MP4, never half-written."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..checks import check_shape
from ..errors import PipelineError, logger
from .paths import VIDEO_EXTENSIONS

# Containers that accept the mp4v codec write_video uses.
_MP4V_CONTAINERS = (".mp4", ".mov", ".avi", ".mkv", ".m4v")


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
    check_shape(frames, "T,H,W,3", "frames")
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
    if check_shape(frames, "T,H,W,3", "frames")["T"] == 0:
        raise PipelineError("frames: no frames to write")
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
