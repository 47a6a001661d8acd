"""A clip whose frames and masks are read on demand: what the pack's nodes pass for long clips.

A :class:`LazyClip` knows its frames' source (a folder, a video file or stream, an IMAGE batch), its
masks' source, the selection, the resize and the edited keyframes, and reads one frame (resized,
edited) or one mask when asked. The methods take its :meth:`~LazyClip.frames` and
:meth:`~LazyClip.masks` views as frame sequences, so a clip of any length costs the memory of the
frames a chunk needs. Turning it into tensors is an explicit step (:meth:`~LazyClip.materialize`)
that first checks the memory the batch needs against the memory that is free.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch

from ..errors import PipelineError, wh
from ..ops import resize_frame, resize_mask
from ..progress import ProgressFn, report
from ..types import Keyframes
from .masks import MaskSource
from .read import FrameSource, TensorFrames

# Float frames (and masks) a view keeps: the methods read a frame (and its neighbour) a few times in
# a row. Each is 100 MB at 4K.
_RECENT = 2


def available_memory() -> int:
    """Bytes of memory free for new allocations (available RAM), or a large number if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with ComfyUI and the pack's requirements
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 1 << 62


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


@dataclass(eq=False)
class LazyClip:
    """Frames and masks of a clip, read on demand.

    frames_source / masks_source: where frame i and its mask come from (at the source's size);
    size: (H, W) the frames and masks are given at (resized from the source's when different:
    area/bicubic for frames, conservatively for masks); edited: artist-edited images by frame index,
    at ``size`` (their masks are empty); keyframes: the clip's :class:`Keyframes` (indices, fps, names,
    source, edited). ``frame(t)`` -> ``(H, W, 3)`` float32; ``mask(t)`` -> ``(H, W)`` float32 1 = hole.
    """

    frames_source: FrameSource
    masks_source: MaskSource
    size: tuple[int, int]
    keyframes: Keyframes
    edited: dict[int, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_tensors(
        cls, frames: torch.Tensor, masks: torch.Tensor, keyframes: Keyframes | None = None
    ) -> LazyClip:
        """A clip over frames ``(T, H, W, 3)`` and masks ``(T or 1, H, W)`` already in memory (e.g. a
        node's IMAGE result), with ``keyframes``' indices, fps and names when they describe it."""
        t, h, w = (int(s) for s in frames.shape[:3])
        src = TensorFrames(frames, list(range(t)))
        mask_source = MaskSource(t, (h, w), tensor=masks.detach().to("cpu", torch.float32))
        if keyframes is None or keyframes.num_frames not in (0, t):
            keyframes = Keyframes(indices=[0], size=(h, w), num_frames=t, names=src.names)
        elif len(keyframes.names) != t:
            keyframes = replace(keyframes, names=src.names)
        keyframes = replace(keyframes, size=(h, w), num_frames=t)
        return cls(src, mask_source, (h, w), keyframes)

    def __len__(self) -> int:
        return len(self.frames_source)

    @property
    def num_frames(self) -> int:
        return len(self.frames_source)

    @property
    def names(self) -> list[str]:
        return self.keyframes.names

    @property
    def fps(self) -> float:
        return self.keyframes.fps

    def frame(self, t: int) -> torch.Tensor:
        if t in self.edited:
            return self.edited[t]
        rgb, _ = self.frames_source.read(t)
        if tuple(rgb.shape[:2]) != tuple(self.size):
            rgb = resize_frame(rgb, self.size)
        return torch.from_numpy(rgb)

    def mask(self, t: int) -> torch.Tensor:
        if t in self.edited:
            return torch.zeros(self.size, dtype=torch.float32)
        m = self.masks_source.read(t)
        if tuple(m.shape) != tuple(self.size):
            m = resize_mask(m, self.size)
        return m.float()

    def frames(self, reach: int = 4) -> _View:
        """The frames as a sequence (``len``, ``[t]``). ``reach``: how many frames back the consumer
        reads again (a chunk and its lookahead): sources that decode in order (videos) keep that many
        decoded frames, as uint8. The view itself keeps the last few float frames, for the reads
        of one frame in a row."""
        self.frames_source.set_window(reach)
        return _View(len(self), self.frame, _RECENT)

    def masks(self, reach: int = 4) -> _View:
        return _View(len(self), self.mask, _RECENT)

    def with_frames(self, source: FrameSource) -> LazyClip:
        """The same clip (masks, keyframes) with its frames read from ``source``, at ``size`` already
        and with the edits in them (e.g. the frames a method wrote)."""
        if len(source) != len(self) or tuple(source.size) != tuple(self.size):
            raise PipelineError(
                f"clip: {len(source)} frames of {wh(source.size)} cannot replace {len(self)} frames of "
                f"{wh(self.size)}"
            )
        return replace(self, frames_source=source, edited={}, notes=[])

    def fingerprint(self) -> str:
        """Changes when a frame, a mask, the selection, the size or an edit changes."""
        h = hashlib.sha256()
        h.update(self.frames_source.fingerprint().encode())
        h.update(self.masks_source.fingerprint().encode())
        h.update(repr((self.size, self.keyframes.indices, sorted(self.edited))).encode())
        for t in sorted(self.edited):
            h.update(self.edited[t].numpy().tobytes())
        return h.hexdigest()

    def batch_bytes(self, frames: int | None = None) -> int:
        """Bytes of ``frames`` (default all) frames and masks as float32 IMAGE and MASK batches."""
        n = len(self) if frames is None else frames
        return n * self.size[0] * self.size[1] * 4 * 4

    def check_fits(self, frames: int | None = None, what: str = "frames") -> None:
        """Refuse, before decoding, a batch that would not fit in the memory that is free."""
        n = len(self) if frames is None else frames
        need, free = self.batch_bytes(n), available_memory()
        if need * 1.25 > free:  # decoding and the nodes after need room too
            raise PipelineError(
                f"{what}: {n} frames of {wh(self.size)} need {_gb(need)} as an IMAGE and MASK batch, but "
                f"only {_gb(free)} of memory are free. Stream the clip instead (Load Keyframes' "
                f"'stream' on, then the pack's nodes read it frame by frame: see the long-clip example "
                f"workflow), or lower frame_cap, width or height"
            )

    def materialize(
        self, frame_cap: int = 0, progress: ProgressFn | None = None, check_memory: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``frame_cap`` frames (0 = all) and their masks as tensors ``(T, H, W, 3)`` and
        ``(T, H, W)``; refused with a clear message when they would not fit in free memory."""
        n = len(self) if frame_cap <= 0 else min(int(frame_cap), len(self))
        if check_memory:
            self.check_fits(n)
        frames = torch.empty((n, *self.size, 3), dtype=torch.float32)
        masks = torch.empty((n, *self.size), dtype=torch.float32)
        for t in range(n):
            frames[t] = self.frame(t)
            masks[t] = self.mask(t)
            report(progress, t + 1, n, f"loading {self.names[t]}")
        return frames, masks


class _View:
    """``len(view)`` and ``view[t]`` over a read function, keeping the last ``window`` items."""

    def __init__(self, n: int, read, window: int) -> None:
        self.n, self.read, self.window = n, read, max(1, int(window))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, t: int) -> torch.Tensor:
        t = int(t)
        if not 0 <= t < self.n:
            raise IndexError(t)
        if t not in self._cache:
            self._cache[t] = self.read(t)
            while len(self._cache) > self.window:
                self._cache.popitem(last=False)
        self._cache.move_to_end(t)
        return self._cache[t]


__all__ = ["LazyClip", "available_memory"]
