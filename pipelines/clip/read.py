"""Decoding images and clips: a folder of frames, a video file (PyAV), an IMAGE batch or one image.

A :class:`FrameSource` reads the frames of a clip on demand: sizes come from the files' headers,
and a frame is decoded only when it is asked for, so a clip of any length costs the memory of a few
frames. :func:`load_frames` decodes a whole clip into one tensor (short clips, and what the IMAGE
outputs of the nodes hold).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..checks import check_int, check_shape
from ..errors import PipelineError, wh
from ..progress import ProgressFn, report
from ..spill import SpillStore
from .paths import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, fingerprint_paths, list_images

# Largest image the pack decodes (8192 x 8192): a few kB of PNG can declare gigapixels, and decoding
# them would take the server down. Read from the header before anything is decoded.
MAX_IMAGE_PIXELS = 1 << 26


# Memory for a video's decoded window (uint8); beyond it the frames wait in temporary files.
_WINDOW_BYTES = 64 * 2**20


def _to_float(array: np.ndarray) -> np.ndarray:
    """Any integer/float image -> float32 in [0, 1] (16-bit PNGs scale by 65535, not 255)."""
    if array.dtype in (np.uint8, np.uint16):
        out = array.astype(np.float32)
        out /= 255.0 if array.dtype == np.uint8 else 65535.0  # in place: one 4K frame, not two
        return out
    if array.dtype in (np.float32, np.float64, np.float16):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    if array.dtype == np.int8:
        return np.clip(array.astype(np.float32) / 127.0, 0.0, 1.0)
    if array.dtype == np.int16:
        return np.clip(array.astype(np.float32) / 32767.0, 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {array.dtype}")


def check_pixels(h: int, w: int, path: object, what: str) -> None:
    """Refuse an image over :data:`MAX_IMAGE_PIXELS` before it is decoded."""
    if h * w > MAX_IMAGE_PIXELS:
        raise PipelineError(
            f"{what}: '{path}' is {w}x{h} ({h * w / 1e6:.0f} Mpx), over the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx per image; resize it (e.g. to 3840x2160) first"
        )


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(height, width) of an image file from its header (nothing is decoded); checked against the
    pixel limit. Raises PipelineError naming ``what`` for files that are not images."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        # PIL refuses the header before giving the size; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"declares {int(found.group(1)) / 1e6:.0f} Mpx" if found else "declares a size"
        raise PipelineError(
            f"{what}: '{path}' {size}, over the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx per image; "
            "resize it (e.g. to 3840x2160) first"
        ) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise PipelineError(
            f"{what}: cannot read image '{path}' (the file is corrupt or not an image)"
        ) from e
    check_pixels(h, w, path, what)
    return int(h), int(w)


def _decode_image(path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file -> (RGB float32 (H, W, 3), alpha float32 (H, W) or None).

    The header's size is checked first. Decoded from bytes (np.fromfile + imdecode) because
    cv2.imread cannot open non-ASCII paths on Windows.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise PipelineError(f"{what}: cannot read '{path}': {e}") from e
    if data.size:
        image_size(path, what)
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


def _select(total: int, frame_cap: int, skip_first: int, every_nth: int) -> list[int]:
    """Indices kept: skip the first ``skip_first``, keep every ``every_nth``, then cap."""
    keep = list(range(skip_first, total, every_nth))
    return keep[:frame_cap] if frame_cap > 0 else keep


def _selection_args(frame_cap: object, skip_first: object, every_nth: object) -> tuple[int, int, int]:
    return (
        check_int(frame_cap, "frame_cap", 0, "use 0 for no limit or a positive number of frames"),
        check_int(skip_first, "skip_first", 0, "use 0 or a positive number of frames to skip"),
        check_int(every_nth, "every_nth", 1, "use 1 to load every frame, 2 for every other, ..."),
    )


def _empty_selection_error(total: int, skip_first: int, source: object) -> PipelineError:
    return PipelineError(
        f"skip_first: skipping {skip_first} frames leaves no frames to load; '{source}' has only {total}"
    )


# --------------------------------------------------------------------------------------------------
# Frame sources
# --------------------------------------------------------------------------------------------------


class FrameSource:
    """The selected frames of a clip, decoded on demand.

    ``len(source)`` frames of ``size`` (H, W); ``read(i)`` -> (RGB float32 (H, W, 3) in [0, 1],
    alpha float32 (H, W) or None). names: one name per frame (file stem, or the frame's index in the
    source as ``00042``); selected: each frame's index in the full source; fps after every-nth (0 =
    unknown); source: where the frames come from, for messages; fingerprint(): changes when the
    source's content or the selection changes.
    """

    size: tuple[int, int]
    names: list[str]
    selected: list[int]
    fps: float = 0.0
    source: str = ""
    what: str = "frames"

    def __len__(self) -> int:
        return len(self.selected)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def set_window(self, frames: int) -> None:
        """How many recent frames a consumer may read again (sources that decode sequentially keep
        that many decoded frames); a no-op for the others."""

    def _check(self, rgb: np.ndarray, where: str) -> None:
        if tuple(rgb.shape[:2]) != tuple(self.size):
            raise PipelineError(
                f"{self.what}: {where} is {wh(rgb.shape[:2])} but the clip's frames are {wh(self.size)}; "
                f"all frames in '{self.source}' must have the same size"
            )


class ImageFiles(FrameSource):
    """A folder of frames (or one image), decoded one file at a time."""

    def __init__(self, files: list[Path], source: Path, selected: list[int], what: str = "frames") -> None:
        self.files, self.selected, self.source, self.what = files, selected, str(source), what
        self.names = [files[i].stem for i in selected]
        self.fps = 0.0
        self.size = image_size(files[selected[0]], what)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        f = self.files[self.selected[i]]
        if not f.is_file():
            raise PipelineError(f"{self.what}: '{f}' disappeared while the clip was being read")
        rgb, alpha = _decode_image(f, self.what)
        if tuple(rgb.shape[:2]) != tuple(self.size):
            first = self.files[self.selected[0]]
            raise PipelineError(
                f"{self.what}: '{f.name}' is {wh(rgb.shape[:2])} but '{first.name}' is {wh(self.size)}; "
                f"all frames in '{self.source}' must have the same size"
            )
        return rgb, alpha

    def fingerprint(self) -> str:
        return fingerprint_paths(*[self.files[i] for i in self.selected])


class VideoFile(FrameSource):
    """A video file (or an in-memory video: ComfyUI's VIDEO), decoded with PyAV, front to back.

    The frame count and size come from the container; frames are decoded in order and the last
    ``window`` selected frames are kept (as uint8), so a consumer that goes back a few frames (the
    backward sweep of a chunk) does not decode again. Going back further restarts the decoder.
    """

    def __init__(
        self,
        video: str | os.PathLike | io.BytesIO,
        frame_cap: int = 0,
        skip_first: int = 0,
        every_nth: int = 1,
        what: str = "frames",
        label: str | None = None,
    ) -> None:
        self.video = video
        self.what = what
        self.source = label or (str(video) if not isinstance(video, io.BytesIO) else "VIDEO input")
        container = self._open()
        try:
            if not container.streams.video:
                raise PipelineError(f"{what}: '{self.source}' has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            h, w = int(ctx.height or 0), int(ctx.width or 0)
            if h <= 0 or w <= 0:
                raise PipelineError(f"{what}: '{self.source}' has a video stream without a frame size")
            check_pixels(h, w, self.source, what)
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            fps = float(rate) if rate else 0.0
            total = int(stream.frames or 0)
            if total <= 0:  # not in the header (mkv, webm, some GIFs): count the packets
                total = sum(1 for p in container.demux(stream) if p.size)
            self._deep = any(getattr(c, "bits", 8) > 8 for c in getattr(ctx.format, "components", ()))
        finally:
            container.close()
        if total <= 0:
            raise PipelineError(f"{what}: the video '{self.source}' has no frames")
        self.total, self.size = total, (h, w)
        self.selected = _select(total, frame_cap, skip_first, every_nth)
        if not self.selected:
            raise _empty_selection_error(total, skip_first, self.source)
        self.names = [f"{i:05d}" for i in self.selected]
        self.fps = fps / every_nth if fps > 0 else 0.0
        self._wanted = set(self.selected)
        self._window = 8
        # The decoded window in order of use; the frames themselves in memory up to a budget (a 4K
        # window is four times a 1080p one), in temporary files beyond it.
        self._cache: OrderedDict[int, None] = OrderedDict()
        self._store = SpillStore(_WINDOW_BYTES, "frames")
        self._container = None
        self._frames = None  # the decoder's iterator
        self._next = 0  # source index of the next decoded frame

    def _open(self):
        import av

        try:
            if isinstance(self.video, io.BytesIO):
                self.video.seek(0)
                return av.open(self.video, mode="r")
            if not os.path.isfile(self.video):
                raise PipelineError(
                    f"{self.what}: '{self.video}' not found (it may have been moved while in use)"
                )
            return av.open(os.fspath(self.video), mode="r")
        except PipelineError:
            raise
        except Exception as e:  # av.error.InvalidDataError and friends: not a video
            raise PipelineError(
                f"{self.what}: cannot open '{self.source}' as a video ({type(e).__name__}: {e}); "
                f"supported: {', '.join(VIDEO_EXTENSIONS)}, "
                f"or a folder of {', '.join(IMAGE_EXTENSIONS)} images"
            ) from e

    def set_window(self, frames: int) -> None:
        self._window = max(self._window, int(frames))

    def _restart(self) -> None:
        self.close()
        self._container = self._open()
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)
        self._next = 0

    def close(self) -> None:
        """Close the decoder (the decoded window stays: reading on reopens)."""
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        target = self.selected[i]
        if target not in self._cache:
            if self._frames is None or target < self._next:
                self._restart()
            fmt = "rgb48le" if self._deep else "rgb24"
            while self._next <= target:
                try:
                    frame = next(self._frames)
                except StopIteration:
                    self.close()
                    raise PipelineError(
                        f"{self.what}: '{self.source}' ended after {self._next} frames, but its header "
                        f"says {self.total}; the file is truncated or was changed while in use"
                    ) from None
                except Exception as e:
                    self.close()
                    raise PipelineError(
                        f"{self.what}: cannot decode frame {self._next} of '{self.source}': {e}"
                    ) from e
                index = self._next
                self._next += 1
                if index in self._wanted:
                    rgb = frame.to_ndarray(format=fmt)
                    self._check(rgb, f"frame {index}")
                    self._cache[index] = None
                    self._store[index] = {"rgb": torch.from_numpy(np.ascontiguousarray(rgb))}
                    while len(self._cache) > self._window:
                        self._store.pop(self._cache.popitem(last=False)[0])
        rgb = self._store[target]["rgb"].numpy()
        self._cache.move_to_end(target)
        return _to_float(rgb), None

    def fingerprint(self) -> str:
        sel = f"|{len(self.selected)}|{self.selected[0]}|{self.selected[-1]}|{self.total}"
        if isinstance(self.video, io.BytesIO):
            return hashlib.sha256(self.video.getbuffer()).hexdigest() + sel
        return fingerprint_paths(self.video) + sel


class TensorFrames(FrameSource):
    """An IMAGE batch ``(B, H, W, 3|4)`` (a 4th channel is the alpha), already in memory."""

    def __init__(self, images: torch.Tensor, selected: list[int], what: str = "images") -> None:
        check_shape(images, "B,H,W,3|4", what)
        self.images, self.selected, self.what = images, selected, what
        self.size = (int(images.shape[1]), int(images.shape[2]))
        self.names = [f"{i:05d}" for i in selected]
        self.fps, self.source = 0.0, "IMAGE input"

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        img = self.images[self.selected[i]].detach().to("cpu", torch.float32).numpy()
        return img[..., :3], (img[..., 3] if img.shape[-1] == 4 else None)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.detach().to("cpu").contiguous().numpy().tobytes())
        return h.hexdigest() + f"|{self.selected}"


def open_frames(
    path: Path | str | io.BytesIO | torch.Tensor,
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    what: str = "frames",
) -> FrameSource:
    """The frame source of a folder of images, an image file, a video file or stream, or an IMAGE
    batch, with the selection: skip the first ``skip_first`` frames, then keep every ``every_nth``,
    then keep at most ``frame_cap`` (0 = all). Nothing is decoded but the first frame's header."""
    frame_cap, skip_first, every_nth = _selection_args(frame_cap, skip_first, every_nth)
    if isinstance(path, torch.Tensor):
        check_shape(path, "B,H,W,3|4", "images")
        selected = _select(int(path.shape[0]), frame_cap, skip_first, every_nth)
        if not selected:
            raise PipelineError(
                f"images: skip_first={skip_first}, every_nth={every_nth} leave no frame of {path.shape[0]}"
            )
        return TensorFrames(path, selected)
    if isinstance(path, io.BytesIO):
        return VideoFile(path, frame_cap, skip_first, every_nth, what)
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{what}: '{path}' not found")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise PipelineError(
                f"{what}: no images found in '{path}' (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "give a folder of frames or a video file"
            )
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        files = [path]
    else:
        return VideoFile(path, frame_cap, skip_first, every_nth, what)
    selected = _select(len(files), frame_cap, skip_first, every_nth)
    if not selected:
        raise _empty_selection_error(len(files), skip_first, path)
    return ImageFiles(files, path, selected, what)


# --------------------------------------------------------------------------------------------------
# Whole clips
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


def read_all(src: FrameSource, progress: ProgressFn | None = None) -> Clip:
    """Every frame of a source in one tensor (allocated once: stacking would need twice the memory)."""
    t = len(src)
    frames = torch.empty((t, *src.size, 3), dtype=torch.float32)
    alpha: torch.Tensor | None = None
    for k in range(t):
        rgb, a = src.read(k)
        frames[k] = torch.from_numpy(rgb)
        if a is not None:
            if alpha is None:
                alpha = torch.ones((t, *src.size), dtype=torch.float32)  # earlier frames: opaque
            alpha[k] = torch.from_numpy(a)
        report(progress, k + 1, t, f"loading {src.names[k]}")
    if isinstance(src, VideoFile):
        src.close()
    return Clip(frames, alpha, list(src.names), src.fps, src.source, [], list(src.selected))


def clip_from_images(
    images: torch.Tensor, frame_cap: int = 0, skip_first: int = 0, every_nth: int = 1
) -> Clip:
    """A :class:`Clip` from an IMAGE batch ``(B, H, W, 3|4)`` (a 4th channel is the alpha), with the
    same selection as :func:`load_frames`; frames are named by their index in the batch."""
    return read_all(open_frames(images, frame_cap, skip_first, every_nth))


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
    return read_all(open_frames(path, frame_cap, skip_first, every_nth), progress)


__all__ = [
    "MAX_IMAGE_PIXELS",
    "Clip",
    "FrameSource",
    "ImageFiles",
    "TensorFrames",
    "VideoFile",
    "check_pixels",
    "clip_from_images",
    "image_size",
    "load_frames",
    "load_image_tensor",
    "open_frames",
    "read_all",
]
