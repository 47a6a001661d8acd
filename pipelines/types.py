"""Data objects passed between the pack's nodes (ComfyUI custom types KEYFRAMES and FLOW).

Conventions: images float32 in [0, 1]; ComfyUI IMAGE is ``(B, H, W, C)``, MASK ``(B, H, W)`` with
1 = hole (region to fill). Flows are ``(2, H, W)`` in pixels, channel 0 = x (right), 1 = y (down),
and are *backward-warping* flows: ``flow_a_to_b(p)`` is where pixel ``p`` of frame a is found in b.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch


class FrameSequence(Protocol):
    """Anything indexable by frame: a ``(T, H, W, C)`` tensor or a lazy reader of ``(H, W, C)`` frames."""

    def __len__(self) -> int: ...

    def __getitem__(self, t: int) -> torch.Tensor: ...


# Called as ``sink(t, filled (H, W, 3), unseen (H, W))`` for every frame of a clip, in order.
FrameSink = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Keyframes:
    """What LoadKeyframes knows about a clip beyond its pixels.

    indices: sorted unique keyframe indices into the (loaded) frame batch.
    size: (height, width) of the loaded frames.
    fps: frame rate of the source (after every-nth), 0 when unknown.
    source: where the frames came from (a path or "IMAGE input"), for messages.
    num_frames: number of loaded frames.
    edited: indices whose frame was replaced by an artist-edited image; these count as fully known.
    names: one file name stem per frame (used by the CLI to write outputs under the same names).
    """

    indices: list[int]
    size: tuple[int, int]
    fps: float = 0.0
    source: str = ""
    num_frames: int = 0
    edited: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.indices = sorted({int(i) for i in self.indices})
        self.edited = sorted({int(i) for i in self.edited})


@dataclass
class FlowSet:
    """Optical flow of a clip, as FlowEstimate computes it.

    forward:  (T-1, 2, h, w) flow frame t -> t+1 (stored at the working resolution h x w, in pixels of
              that resolution; use :meth:`pair` to get it at frame resolution).
    backward: (T-1, 2, h, w) flow frame t+1 -> t.
    fb_error_forward / fb_error_backward: (T-1, h, w) forward-backward consistency error in pixels.
    keyframe: {(t, k): (flow t->k, flow k->t, error t->k)} for the requested frame/keyframe pairs.
    size: (H, W) of the frames the flow belongs to.
    method: a short description ("dis-medium", "raft-large", ...).
    filled: whether flow inside the masks was replaced by boundary interpolation.
    """

    forward: torch.Tensor
    backward: torch.Tensor
    fb_error_forward: torch.Tensor
    fb_error_backward: torch.Tensor
    size: tuple[int, int]
    method: str = ""
    filled: bool = False
    keyframe: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )

    @property
    def num_frames(self) -> int:
        return int(self.forward.shape[0]) + 1
