"""Small previews of clips for the graph editor: filmstrip thumbnails, animations, flow pictures.

Plain torch and OpenCV (no ComfyUI): the nodes save what these functions make and the pack's web
extension shows it. Everything is bounded in size whatever the clip's length or resolution.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .flow import flow_to_color
from .progress import ProgressFn, report
from .types import FrameSequence

HOLE_COLOUR = (1.0, 0.15, 0.35)  # mask overlay, RGB


def sample_indices(n: int, max_count: int) -> list[int]:
    """At most ``max_count`` indices of ``range(n)``, evenly spread, first and last included."""
    if n <= 0:
        return []
    if n <= max_count:
        return list(range(n))
    if max_count <= 1:
        return [0]
    return sorted({round(i * (n - 1) / (max_count - 1)) for i in range(max_count)})


def fit_within(h: int, w: int, max_width: int, max_height: int | None = None) -> tuple[int, int]:
    """(h, w) scaled down (never up) to fit max_width x max_height, aspect kept, sides even."""
    scale = min(1.0, max_width / w, (max_height or h) / h)
    return max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2)


def shrink(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, C) float images resized (area) to size (h, w): (T, h, w, C)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames.float()
    x = frames.float().permute(0, 3, 1, 2)
    return F.interpolate(x, size=size, mode="area").permute(0, 2, 3, 1)


def overlay_mask(frames: torch.Tensor, masks: torch.Tensor | None, alpha: float = 0.5) -> torch.Tensor:
    """Tint the hole: frames (T, h, w, 3) in [0, 1], masks (T, h, w) or (1, h, w) in [0, 1] or None."""
    if masks is None:
        return frames
    m = masks.float()[..., None].clamp(0, 1) * alpha
    colour = torch.tensor(HOLE_COLOUR, dtype=frames.dtype)
    return frames * (1 - m) + colour * m


def _take(seq: torch.Tensor | FrameSequence, idx: list[int]) -> torch.Tensor:
    """Items ``idx`` of a batch tensor or of a lazy sequence (a clip read frame by frame)."""
    if isinstance(seq, torch.Tensor):
        return seq[idx]
    return torch.stack([seq[i] for i in idx])


def _masks_at(
    masks: torch.Tensor | FrameSequence | None, idx: list[int], size: tuple[int, int]
) -> torch.Tensor | None:
    if masks is None:
        return None
    if isinstance(masks, torch.Tensor) and masks.ndim == 2:
        masks = masks[None]
    sel = _take(masks, [min(i, len(masks) - 1) for i in idx]).float()
    return F.interpolate(sel[:, None], size=size, mode="area")[:, 0]


def animation(
    frames: torch.Tensor,
    masks: torch.Tensor | None = None,
    max_frames: int = 48,
    max_width: int = 512,
    max_height: int = 512,
) -> tuple[list[int], torch.Tensor]:
    """A short looping preview of a clip: (indices used, (N, h, w, 3) float in [0, 1]).

    frames (T, H, W, C>=3); masks (T, H, W) tinted over the frames when given.
    """
    idx = sample_indices(int(frames.shape[0]), max_frames)
    size = fit_within(int(frames.shape[1]), int(frames.shape[2]), max_width, max_height)
    small = shrink(frames[idx, ..., :3], size).clamp(0, 1)
    return idx, overlay_mask(small, _masks_at(masks, idx, size))


def flow_preview(
    forward: torch.Tensor,
    occlusion: torch.Tensor,
    max_frames: int = 48,
    max_width: int = 768,
    gap: int = 4,
) -> tuple[list[int], torch.Tensor]:
    """Colour-wheel flow beside its occlusion mask, for an animated preview.

    forward (N, 2, h, w) flows; occlusion (N, H, W) in {0, 1} (any size). One colour scale for the
    whole clip, so motion compares across frames. Returns (indices, (n, h', 2 w' + gap, 3)).
    """
    idx = sample_indices(int(forward.shape[0]), max_frames)
    fl = forward[idx].float()
    h, w = fit_within(int(fl.shape[2]), int(fl.shape[3]), (max_width - gap) // 2)
    scale = torch.tensor([w / fl.shape[3], h / fl.shape[2]]).view(1, 2, 1, 1)
    fl = F.interpolate(fl, size=(h, w), mode="area") * scale
    colour = flow_to_color(fl, max_magnitude=max(float(fl.norm(dim=1).max()), 1e-3))
    occ = F.interpolate(occlusion[idx].float()[:, None], size=(h, w), mode="area")[:, 0]
    occ = occ[..., None].expand(-1, -1, -1, 3)
    sep = torch.full((len(idx), h, gap, 3), 0.2)
    return idx, torch.cat([colour, sep, occ], dim=2)


def encode_jpeg(image: torch.Tensor, quality: int = 82) -> bytes:
    """(h, w, 3) float RGB in [0, 1] -> JPEG bytes."""
    a = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(a[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------------------------------
# Filmstrip of LoadKeyframes
# --------------------------------------------------------------------------------------------------


@dataclass
class Filmstrip:
    """Previews of one LoadKeyframes run.

    frames: indices into the clip of the stored pictures (every frame up to ``max_frames``, else evenly
    spread); jpegs: one JPEG per stored frame, the hole tinted; size (h, w) of the pictures;
    num_frames / keyframes / source: the clip's.
    """

    num_frames: int
    keyframes: list[int]
    size: tuple[int, int]
    frames: list[int]
    jpegs: list[bytes]
    source: str = ""
    run: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def nbytes(self) -> int:
        return sum(len(j) for j in self.jpegs)

    def meta(self) -> dict:
        """What the web extension needs to lay the filmstrip out (JSON-serialisable)."""
        return {
            "run": self.run,
            "num_frames": self.num_frames,
            "keyframes": list(self.keyframes),
            "frames": list(self.frames),
            "width": self.size[1],
            "height": self.size[0],
            "source": self.source,
        }


def make_filmstrip(
    frames: torch.Tensor | FrameSequence,
    masks: torch.Tensor | FrameSequence | None,
    keyframes: list[int],
    source: str = "",
    max_width: int = 384,
    max_height: int = 288,
    max_frames: int = 400,
    quality: int = 80,
    progress: ProgressFn | None = None,
) -> Filmstrip:
    """Filmstrip pictures of a clip: frames (T, H, W, 3) in [0, 1], masks (T, H, W) or None (tensors
    or lazy sequences of frames, which are read in order).

    The pictures are wide enough to show one frame at the node's width (the scrubber) and serve as the
    strip's thumbnails too. Made one frame at a time, so a long or large clip costs no extra memory;
    ``progress(done, total, text)`` is called after each (an exception from it, Cancel, stops there:
    at 4K each frame takes a read and a resize of about half a second).
    """
    T = len(frames)
    H, W = (int(s) for s in frames[0].shape[:2])
    size = fit_within(H, W, max_width, max_height)
    idx = sample_indices(T, max_frames)
    jpegs: list[bytes] = []
    for n, i in enumerate(idx):
        small = shrink(_take(frames, [i])[..., :3], size).clamp(0, 1)
        small = overlay_mask(small, _masks_at(masks, [i], size))
        jpegs.append(encode_jpeg(small[0], quality))
        report(progress, n + 1, len(idx), f"filmstrip frame {i}")
    return Filmstrip(T, sorted(set(keyframes)), size, idx, jpegs, source)


class FilmstripStore:
    """The last few filmstrips, least recently used dropped first; bounded in count and bytes.

    Thread-safe: nodes add from the executor thread, the web routes read from the server's loop.
    A node's new run replaces its previous one (``owner`` = the node's id in the graph).
    """

    def __init__(self, max_runs: int = 16, max_bytes: int = 64 << 20) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, Filmstrip] = OrderedDict()
        self._owner: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, strip: Filmstrip, owner: str | None = None) -> str:
        with self._lock:
            if owner is not None:
                old = self._owner.get(owner)
                if old is not None:
                    self._runs.pop(old, None)
                self._owner[owner] = strip.run
            self._runs[strip.run] = strip
            while len(self._runs) > self.max_runs or (
                len(self._runs) > 1 and sum(s.nbytes for s in self._runs.values()) > self.max_bytes
            ):
                self._runs.popitem(last=False)
            live = set(self._runs)
            self._owner = {k: v for k, v in self._owner.items() if v in live}
            return strip.run

    def get(self, run: str) -> Filmstrip | None:
        with self._lock:
            strip = self._runs.get(run)
            if strip is not None:
                self._runs.move_to_end(run)
            return strip

    def picture(self, run: str, frame: int) -> bytes | None:
        """JPEG of clip frame ``frame`` (the nearest stored one), or None if the run is gone."""
        strip = self.get(run)
        if strip is None or not strip.frames:
            return None
        pos = int(np.argmin([abs(f - frame) for f in strip.frames]))
        return strip.jpegs[pos]

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._runs.values())
