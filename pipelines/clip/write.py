"""Writing results: frames under their input names and an MP4, never half-written.

- :func:`save_frames`: a batch of frames as images (temporary names renamed at the end).
- :class:`VideoEncoder` / :func:`write_video`: H.264 MP4 (yuv420p, plays in browsers) through PyAV,
  ComfyUI's own video library; odd sizes are padded by one edge pixel (4:2:0 needs even sizes).
- :class:`ClipWriter`: a clip written as it is made, frame by frame, with a small progress record
  so that an interrupted run is recognisable and the next one continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from ..checks import check_shape
from ..errors import PipelineError, logger
from ..ops import release_freed_memory
from ..progress import run_checked
from .paths import VIDEO_EXTENSIONS

# Containers that take H.264.
_H264_CONTAINERS = (".mp4", ".mov", ".avi", ".mkv", ".m4v")
PROGRESS_FILE = ".kfp_progress.json"
STATE_FILE = ".kfp_state.safetensors"


def _to_u8(frame: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> (H, W, 3) uint8 RGB."""
    a = frame.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    return (a * 255.0 + 0.5).astype(np.uint8)


def _to_bgr_u8(frame: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> (H, W, 3) uint8 BGR for OpenCV."""
    return np.ascontiguousarray(_to_u8(frame)[:, :, ::-1])


def _temp_name(path: Path) -> Path:
    # Same folder (so os.replace is atomic), same extension (encoders pick the format from it).
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def _write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    tmp = _temp_name(path)
    try:
        if isinstance(data, np.ndarray):
            data.tofile(str(tmp))
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encode_image(frame: torch.Tensor, ext: str, name: str) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, _to_bgr_u8(frame), params)
    if not ok:
        raise PipelineError(f"cannot encode frame '{name}' as {ext}")
    return buf


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
    temps: list[Path] = []
    try:
        for i, target in enumerate(targets):
            buf = _encode_image(frames[i], ext, target.name)
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


# --------------------------------------------------------------------------------------------------
# MP4
# --------------------------------------------------------------------------------------------------


def video_path(path: Path) -> Path:
    """``path`` with a container that takes H.264 (``out.gif`` -> ``out.mp4``, ``out`` -> ``out.mp4``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _H264_CONTAINERS:
        return path
    return path.with_suffix(".mp4") if suffix in VIDEO_EXTENSIONS else path.with_name(path.name + ".mp4")


def _lookahead_option(size: tuple[int, int]) -> dict[str, str]:
    """x264 holds its rate-control lookahead (40 frames by default) in memory: about 1 GB at 4K.
    Larger frames get a shorter one (~150 MB of frames, at least 10); 1080p and below keep x264's."""
    frames = int(150e6 // max(1.5 * size[0] * size[1], 1))
    return {} if frames >= 40 else {"rc-lookahead": str(max(10, frames))}


class VideoEncoder:
    """An H.264 (yuv420p) video written frame by frame to a temporary file, renamed when closed.

    Odd frame sizes are padded to even ones by repeating the last row/column (4:2:0 chroma needs even
    sizes; browsers need 4:2:0). Without libx264 in PyAV's build, MPEG-4 Part 2 is used with a note
    (such files play in VLC and ffmpeg, not in every browser). fps <= 0 means 24.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], crf: int = 18) -> None:
        import av

        self.path = video_path(Path(path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (int(size[0]), int(size[1]))
        self.even = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
        if self.even != self.size:
            logger.info(
                "video %s: %dx%d padded to %dx%d (H.264 4:2:0 needs even sizes)",
                self.path.name, self.size[1], self.size[0], self.even[1], self.even[0],
            )  # fmt: skip
        fps = float(fps) if fps and fps > 0 else 24.0
        self.tmp = _temp_name(self.path)
        self.count = 0
        self._container = av.open(str(self.tmp), mode="w")
        try:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            if codec != "libx264":
                logger.warning("video %s: PyAV has no libx264; writing MPEG-4 Part 2 instead", self.path.name)
            self._stream = self._container.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
            self._stream.width, self._stream.height = self.even[1], self.even[0]
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self._stream.options = {"crf": str(int(crf)), **_lookahead_option(self.even)}
        except Exception:
            self.abort()
            raise

    def add(self, frame: torch.Tensor) -> None:
        """Encode one frame ``(H, W, 3)`` in [0, 1]."""
        import av

        u8 = _to_u8(frame)
        if tuple(u8.shape[:2]) != self.size:
            raise PipelineError(
                f"video: frame of {u8.shape[1]}x{u8.shape[0]} in a video of {self.size[1]}x{self.size[0]}"
            )
        if self.even != self.size:
            u8 = np.pad(
                u8, ((0, self.even[0] - self.size[0]), (0, self.even[1] - self.size[1]), (0, 0)), mode="edge"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(u8), format="rgb24").reformat(format="yuv420p")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> Path:
        """Flush, close and move the video to its name. Returns the path."""
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            if self.count == 0:
                raise PipelineError(f"video: no frames were written to '{self.path}'")
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished video: no half-written file is left."""
        try:
            self._container.close()
        except Exception:  # already closed, or broken: the temp file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)


def write_video(frames: torch.Tensor, path: Path, fps: float) -> Path:
    """Write frames ``(T, H, W, 3)`` to an H.264 MP4 (``.mp4`` added if there is no video extension).

    fps <= 0 means 24. Written to a temporary file first, then renamed: no half-written videos.
    """
    if check_shape(frames, "T,H,W,3", "frames")["T"] == 0:
        raise PipelineError("frames: no frames to write")
    enc = VideoEncoder(Path(path), fps, (int(frames.shape[1]), int(frames.shape[2])))
    try:
        for i in range(frames.shape[0]):
            enc.add(frames[i])
        return enc.close()
    except BaseException:
        enc.abort()
        raise


# --------------------------------------------------------------------------------------------------
# A clip written as it is made
# --------------------------------------------------------------------------------------------------


class ClipWriter:
    """Frames written as they are made: ``folder/<name>.png`` per frame, an MP4 and a progress record.

    ``folder/.kfp_progress.json`` records the ``fingerprint`` of the job (inputs and settings), the
    frames committed (``checkpoint``, after each chunk), an optional resume state (tensors, in
    ``.kfp_state.safetensors``) and whether the job completed. Each PNG is written under a temporary
    name and renamed, and the MP4 is renamed only when it is complete, so an interrupted job leaves
    complete files and the record. A new writer for the same fingerprint starts at the last
    committed frame (``start``, ``state``); for another fingerprint it starts over.

    Usage: ``w = ClipWriter(...)``; compute frames ``w.start ..`` and ``w.write(t, frame)`` each in
    order, ``w.checkpoint(n, state)`` after each chunk, ``w.finish()`` at the end; ``w.abort()`` (or
    leaving a ``with`` block by an exception) on failure or cancel.
    """

    def __init__(
        self,
        folder: Path,
        names: Sequence[str],
        fps: float,
        fingerprint: str,
        video_name: str | None = "result.mp4",
        resume: bool = True,
        ext: str = ".png",
    ) -> None:
        self.folder = Path(folder)
        self.names = [Path(str(n)).name for n in names]
        if len(set(self.names)) != len(self.names):
            raise PipelineError(
                "frames: frame names are not unique, so they cannot be written under their names"
            )
        self.fps, self.fingerprint, self.ext = fps, fingerprint, ext if ext.startswith(".") else "." + ext
        self.video_name = video_name
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.partial-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        self.record_path = self.folder / PROGRESS_FILE
        self.start, self.state, self.complete = 0, None, False
        if resume:
            self._resume()
        self._next = self.start
        self._encoder: VideoEncoder | None = None

    # -- resume ---------------------------------------------------------------------------------
    def frame_path(self, t: int) -> Path:
        return self.folder / f"{self.names[t]}{self.ext}"

    @property
    def video_path(self) -> Path | None:
        return None if self.video_name is None else video_path(self.folder / self.video_name)

    def _resume(self) -> None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return
        if record.get("fingerprint") != self.fingerprint or record.get("total") != len(self.names):
            logging.getLogger("keyframe_propagation").info(
                "%s: the inputs or settings changed since the last run; starting over", self.folder
            )
            return
        done = int(record.get("done", 0))
        if not all(self.frame_path(t).is_file() for t in range(done)):
            return
        state = None
        if record.get("state"):
            try:
                from safetensors.torch import load_file

                state = load_file(str(self.folder / STATE_FILE))
            except Exception:  # missing or torn: start over
                return
        self.start, self.state = done, state
        vp = self.video_path
        self.complete = (
            bool(record.get("complete")) and done == len(self.names) and (vp is None or vp.is_file())
        )

    # -- writing --------------------------------------------------------------------------------
    def write(self, t: int, frame: torch.Tensor, check: Callable[[], None] | None = None) -> Path:
        """Write frame ``t`` (frames come in order, from ``start``). ``check`` (Cancel) is called
        while the image is encoded (about half a second for a 4K PNG; see ``run_checked``)."""
        if t != self._next:
            raise ValueError(f"ClipWriter: frame {t} written, frame {self._next} expected")
        if self._encoder is None and self.video_name is not None:
            self._encoder = VideoEncoder(self.folder / self.video_name, self.fps, tuple(frame.shape[:2]))
            for k in range(self.start):  # a resumed run: the video starts with the frames on disk
                from .read import load_image_tensor

                self._encoder.add(load_image_tensor(self.frame_path(k), "frames"))
        path = self.frame_path(t)
        _write_atomic(path, run_checked(partial(_encode_image, frame, self.ext, path.name), check))
        if self._encoder is not None:
            self._encoder.add(frame)
        self._next += 1
        release_freed_memory()  # a long clip's resident memory stays what is in use (see ops)
        return path

    def checkpoint(self, done: int, state: dict[str, torch.Tensor] | None = None) -> None:
        """Commit the first ``done`` frames (all written) and the state a later run resumes from."""
        if done > self._next:
            raise ValueError(f"ClipWriter: {done} frames committed, {self._next} written")
        if state:
            from safetensors.torch import save_file

            tmp = _temp_name(self.folder / STATE_FILE)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
            os.replace(tmp, self.folder / STATE_FILE)
        self._record(done, bool(state), complete=False)

    def _record(self, done: int, state: bool, complete: bool) -> None:
        record = {
            "fingerprint": self.fingerprint,
            "total": len(self.names),
            "done": int(done),
            "state": state,
            "complete": complete,
            "frames": f"{self.names[0] if self.names else ''}{self.ext} ...",
            "video": None if self.video_path is None else self.video_path.name,
        }
        _write_atomic(self.record_path, json.dumps(record, indent=1).encode())

    def finish(self) -> tuple[list[Path], Path | None]:
        """After the last frame: the video is completed and the record marked complete."""
        if self._next != len(self.names) and not self.complete:
            raise ValueError(f"ClipWriter: {self._next} of {len(self.names)} frames written")
        video = self.video_path
        if self._encoder is not None:
            video = self._encoder.close()
            self._encoder = None
        (self.folder / STATE_FILE).unlink(missing_ok=True)
        self._record(len(self.names), False, complete=True)
        self.complete = True
        return [self.frame_path(t) for t in range(len(self.names))], video

    def abort(self) -> None:
        """Stop: the unfinished video is dropped; the frames and the record stay for a resume."""
        if self._encoder is not None:
            self._encoder.abort()
            self._encoder = None

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


__all__ = ["PROGRESS_FILE", "ClipWriter", "VideoEncoder", "save_frames", "video_path", "write_video"]
