"""Zero-download object removal: fill each hole pixel from the frames where it is visible.

The default of TwoStreamInpaint. Each masked pixel follows consistent optical-flow chains to the
nearest frames where it is visible (artist-edited keyframes first), forward and backward in time;
the two candidates are blended by temporal distance, and only pixels never seen anywhere fall back
to OpenCV's Telea inpainting, per frame.

Memory is bounded by the chunk, not the clip: the clip is processed in chunks of ``chunk`` frames.
The forward sweep carries one frame of state across chunks (its reach is unbounded); the backward
sweep of a chunk starts ``lookahead`` frames after the chunk's end (or at the next edited keyframe
within ``keyframe_reach``). Flows of the pairs a chunk needs are computed once and cached only
while a later chunk still needs them. Frames are read through ``frames[t]``, so a lazy reader
(the CLI's) keeps only the window in memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import cv2
import numpy as np
import torch

from .checks import check_finite_result, check_known_pixels
from .errors import PipelineError
from .flow import FlowEstimator, complete_flow, fb_error, flow_pair
from .ops import dilate, hole_box, release_freed_memory, smooth_fill, warp
from .progress import ProgressFn, report, run_checked
from .spill import SpillStore
from .types import FlowSet, FrameSequence, FrameSink

UNSEEN_FILLS = ("per_frame", "carried")


@dataclass
class PropagationConfig:
    """Parameters of the flow propagation (defaults chosen on the benchmark clips).

    chunk: frames per chunk; the unit of progress and of memory.
    lookahead: frames after a chunk that its backward sweep starts from (reach of backward chains).
    keyframe_reach: an edited keyframe up to this many frames after a chunk extends its backward
        sweep to it, so keyframes are reached first.
    consistency: a chain step is trusted where the forward-backward error is below
        ``consistency + consistency_rel * |flow|`` pixels.
    mask_dilation: pixels the hole is grown by before filling (masks that hug an object leave a halo).
    flow_mask_dilation: pixels the hole is grown by for flow completion (flow at the object's edge
        belongs to the object, not to the background behind it).
    telea_radius: radius of OpenCV's Telea inpainting for pixels never seen.
    valid_threshold: a chain link needs this much valid weight among the 4 bilinear neighbours.
        Colours are premultiplied by validity, so 0.5 takes the valid neighbours only; 0.999 (all
        four) erodes the reachable region by up to a pixel per link.
    hole_consistency: if set, the (looser) threshold used inside the completed flow, where both
        directions are interpolations; None = the same as ``consistency``.
    flow_fill: flow completion in the hole: "homography" (RANSAC camera motion fitted around the
        hole + interpolated residual) or "idw" (inverse-distance weighting only, as SPEC A).
    unseen_fill: pixels that no frame shows: "per_frame" fills them in every frame on its own
        (Telea, or the ``fill`` given to :func:`propagate_fill`); "carried" fills them where they first
        appear and carries that fill on to the next frames with the flow, like the colours frames
        show (stable from frame to frame; filled again only where the chain breaks).
    flow_prefill: estimate the flow on frames whose hole is filled smoothly from its edge
        (:func:`~.ops.smooth_fill`) instead of as given: the hole's own edges (an object's outline,
        a greyed box) are strong features, and the estimate near them follows the hole instead of
        the background. Only with an estimator (a given FlowSet is used as is).
    flow_union: complete (and prefill) the flows of a pair (t, t+1) over both frames' holes, not
        each frame's own: where the hole moved between the two frames, one frame's background is
        matched to the other's hole, so the flow there (and in the margin around it) belongs to the
        hole, not to the background. A hole that does not move is its own union: no change.
    flow_passes: 2 = propagate twice, for about twice the time. The first pass fills the holes as
        ``flow_passes=1`` does; the second estimates the flows again on the frames with their holes
        filled by it, and completes them over a narrower margin (``_GUIDED_MARGIN``): a filled hole
        has no edges of its own, so the estimate next to it follows the background. The first pass
        runs a few chunks ahead of the second (memory stays bounded by the chunk) and uses Telea for
        what no frame shows. A given FlowSet is the first pass's; the second estimates with the
        ``estimator`` (DIS medium if none). ``flow_prefill`` applies to the first pass.
    memory_mb: memory kept for the window (the flows of a chunk and its lookahead, the backward
        states of a chunk); what is beyond it is kept in temporary files, so a job's memory does not
        grow with the frame size. The results are the same bit for bit (not part of a job's identity).
    ghost_check: if set, known pixels that do not move as the completed flow says are not taken as
        sources: their colour differs by more than this (mean over RGB, 0-1) from the previous or
        the next frame's where the flow carries them. They belong to something moving on its own
        (a passer-by near the hole), and chains that follow the background's motion onto them
        would leave ghost copies of it. None = off.
    """

    chunk: int = 20
    lookahead: int = 40
    keyframe_reach: int = 100
    consistency: float = 1.0
    consistency_rel: float = 0.05
    mask_dilation: int = 0
    flow_mask_dilation: int = 15
    telea_radius: int = 5
    valid_threshold: float = 0.5
    hole_consistency: float | None = None
    flow_fill: str = "homography"
    ghost_check: float | None = None
    unseen_fill: str = "per_frame"
    flow_prefill: bool = False
    flow_union: bool = True
    flow_passes: int = 1
    memory_mb: int = field(default=256, repr=False, compare=False)


def telea_fill(frame: torch.Tensor, mask: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Per-frame classical inpainting (OpenCV Telea).

    frame: (H,W,3) float [0,1]; mask: (H,W), >0.5 = hole. Returns (H,W,3); known pixels unchanged.
    Runs on the hole's box plus a margin wider than the radius: Telea only reads pixels within the
    radius of the hole, so the result is that of the whole frame, at the cost of the box.
    """
    box = hole_box(mask)
    if box is None:
        return frame.clone()
    H, W = mask.shape[-2:]
    m = int(radius) + 2
    y0, y1, x0, x1 = max(0, box[0] - m), min(H, box[1] + m), max(0, box[2] - m), min(W, box[3] + m)
    hole = (mask[y0:y1, x0:x1] > 0.5).cpu().numpy().astype(np.uint8)
    img = (frame[y0:y1, x0:x1].clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    out = cv2.inpaint(img, hole, float(radius), cv2.INPAINT_TELEA)
    filled = torch.from_numpy(out).to(frame) / 255.0
    result = frame.clone()
    sel = torch.from_numpy(hole.astype(bool)).to(frame.device)[..., None]
    result[y0:y1, x0:x1] = torch.where(sel, filled, frame[y0:y1, x0:x1])
    return result


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) of a frame's hole

# Pixels the known pixels found moving on their own are grown by (ghost_check): on the crossing clip
# of pipelines/testing/synthetic.py, 0 leaves a ghost copy in some frames, 2 none.
_GHOST_GROW = 2
# Known pixels around a hole's box that its smooth fill (flow_prefill) is computed from.
_PREFILL_MARGIN = 16
# flow_passes=2: the margin the second pass completes its flows over (bench_removal, cases B and C:
# on the filled frames 5 px gains over 15, and over 0).
_GUIDED_MARGIN = 5


@dataclass
class _Pair:
    """Filled flows of the pair (t, t+1) and their trust masks, kept only over the holes' boxes.

    fwd (2, h, w) flow t -> t+1 on frame t's grid, over ``box_t`` (the box of hole t); bwd flow
    t+1 -> t on frame t+1's grid over ``box_t1``. Chain steps only look at hole pixels, so the rest of
    the flows is never needed once they are completed and checked (which needs the whole frame).
    """

    fwd: torch.Tensor | None
    bwd: torch.Tensor | None
    trust_fwd: torch.Tensor | None
    trust_bwd: torch.Tensor | None
    box_t: Box | None
    box_t1: Box | None

    _TENSORS = ("fwd", "bwd", "trust_fwd", "trust_bwd")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k) for k in self._TENSORS if getattr(self, k) is not None}
        for k in ("box_t", "box_t1"):
            if getattr(self, k) is not None:
                out[k] = torch.tensor(getattr(self, k), dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> _Pair:
        def box(k: str) -> Box | None:
            return tuple(int(v) for v in d[k].tolist()) if k in d else None

        return cls(*(d.get(k) for k in cls._TENSORS), box("box_t"), box("box_t1"))


class _PairFlows:
    """Filled flows and consistency masks of consecutive pairs, cached while still needed.

    ``get(t)`` returns the :class:`_Pair` (t, t+1): flow t->t+1 (filled in hole t), flow t+1->t
    (filled in hole t+1) and the two trust masks of those flows, cropped to the holes' boxes.
    """

    def __init__(
        self,
        frames: FrameSequence,
        holes: Callable[[int], torch.Tensor],
        flows: FlowSet | None,
        estimator: FlowEstimator | None,
        cfg: PropagationConfig,
        size: tuple[int, int],
        tick: Callable[[], None] | None = None,
        guide: _Guide | None = None,
    ) -> None:
        self.frames, self.holes, self.flows, self.estimator = frames, holes, flows, estimator
        self.guide = guide  # flow_passes=2: the first pass, whose fills the estimator sees
        self.cfg, self.size = cfg, size
        # Called between the steps of a pair (each a large-frame flow estimate or completion), so
        # Cancel (raised by it) does not wait for the whole pair.
        self.tick = tick or (lambda: None)
        self.check = tick  # also called during the long calls below (see run_checked)
        # Kept while a later chunk still needs them; beyond the budget, in temporary files.
        self.cache = SpillStore(int(cfg.memory_mb * 0.6 * 2**20), "flows")
        self.computed = 0
        # Per frame, the known pixels that move on their own (ghost_check), bit-packed: each pair adds
        # what its two frames show, so a frame's map is whole once both of its pairs were made.
        self.moving_bits: dict[int, np.ndarray] = {}

    def _trust(self, f: torch.Tensor, err: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        mag = torch.hypot(f[0], f[1])
        ok = err < self.cfg.consistency + self.cfg.consistency_rel * mag
        if self.cfg.hole_consistency is not None:
            loose = err < self.cfg.hole_consistency + self.cfg.consistency_rel * mag
            ok = torch.where(filled > 0.5, loose, ok)
        return ok

    def _moving(
        self, img_s: torch.Tensor, img_o: torch.Tensor, hole_s: torch.Tensor, hole_o: torch.Tensor,
        flow: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """(H,W) bool, True on known pixels of frame s (``img_s`` (H,W,3), ``hole_s``) that do not move
        as the completed ``flow`` (s -> o, the background's motion around the hole) says: their colour
        differs from frame o's (``img_o``, ``hole_o``) where that flow lands (on a known pixel) by more
        than ``ghost_check`` (mean over RGB, 0-1). Such a pixel belongs to something moving on its own
        near the hole."""
        img_s = img_s[..., :3].float().permute(2, 0, 1)
        img_o = img_o[..., :3].float().permute(2, 0, 1)
        target = torch.cat([img_o, 1.0 - hole_o[None]], 0)
        landed = warp(target[None], flow[None])[0]
        differs = (img_s - landed[:3]).abs().mean(0) > float(self.cfg.ghost_check)
        # Grown a little: an object's edges and texture show its motion, its smooth parts may not.
        moving = dilate((differs & (landed[3] >= 0.999)).float(), _GHOST_GROW) > 0.5
        return moving & (hole_s < 0.5)

    def _add_moving(self, s: int, moving: torch.Tensor) -> None:
        bits = np.packbits(moving.cpu().numpy().reshape(-1))
        self.moving_bits[s] = bits if s not in self.moving_bits else self.moving_bits[s] | bits

    def moving_tensor(self, s: int) -> torch.Tensor | None:
        """Frame ``s``'s map of pixels moving on their own, bit-packed, for a resume record."""
        bits = self.moving_bits.get(s)
        return None if bits is None else torch.from_numpy(bits.copy())

    def set_moving(self, s: int, bits: torch.Tensor | None) -> None:
        if bits is not None:
            self.moving_bits[s] = bits.numpy().astype(np.uint8)

    def sources(self, s: int, state: torch.Tensor) -> torch.Tensor:
        """Frame ``s``'s state (6,H,W) as a source for its neighbours: without the pixels that move
        on their own (``ghost_check``). Unchanged when there are none; idempotent."""
        bits = self.moving_bits.get(s)
        if bits is None or not bits.any():
            return state
        H, W = self.size
        moving = torch.from_numpy(np.unpackbits(bits, count=H * W).reshape(H, W).astype(bool))
        keep = (~moving.to(state.device)).float()
        state = state.clone()
        state[[0, 1, 2, 3, 5, 6]] *= keep  # colour and flags are premultiplied by validity
        return state

    def _flow_input(self, t: int, region: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Frame ``t`` as the flow estimator gets it: (1, H, W, 3) float. With a guide (flow_passes=2)
        its own hole ``own`` (H,W) holds the first pass's fill; else with ``flow_prefill`` the
        ``region`` (H,W) is filled smoothly (on its box and a margin: the fill needs the known pixels
        around it)."""
        image = self.frames[t][None, ..., :3].float()
        if self.guide is not None:
            return self.guide.apply(t, image, own)
        box = hole_box(region) if self.cfg.flow_prefill else None
        if box is None:
            return image
        H, W = self.size
        y0, y1, x0, x1 = box
        y0, y1, x0, x1 = (
            max(y0 - _PREFILL_MARGIN, 0),
            min(y1 + _PREFILL_MARGIN, H),
            max(x0 - _PREFILL_MARGIN, 0),
            min(x1 + _PREFILL_MARGIN, W),
        )
        image = image.clone()  # .float() of a float frame is the frame itself: never write into it
        crop = image[0, y0:y1, x0:x1].permute(2, 0, 1)
        image[0, y0:y1, x0:x1] = smooth_fill(crop, region[y0:y1, x0:x1]).permute(1, 2, 0)
        return image

    def get(self, t: int) -> _Pair:
        if t in self.cache:
            return _Pair.from_tensors(self.cache[t])
        # Frames and holes are read here, the arithmetic runs in run_checked's worker: a lazy clip's
        # reader is used by this thread only, also when a Cancel leaves a worker finishing.
        h0, h1 = self.holes(t), self.holes(t + 1)
        if self.cfg.flow_union:
            c0 = c1 = torch.maximum(h0, h1)
        else:
            c0, c1 = h0, h1
        if self.flows is not None:
            raw_f, raw_b, _, _ = flow_pair(self.flows, t, self.size)
        else:
            a, b = self._flow_input(t, c0, h0), self._flow_input(t + 1, c1, h1)
            raw_f = run_checked(partial(self.estimator, a, b), self.check)[0]
            self.tick()
            raw_b = run_checked(partial(self.estimator, b, a), self.check)[0]
            self.tick()
            del a, b
        images = (self.frames[t], self.frames[t + 1]) if self.cfg.ghost_check is not None else None
        entry, moving = run_checked(
            partial(self._complete, t, raw_f, raw_b, h0, h1, c0, c1, images), self.check
        )
        self.tick()
        if moving is not None:
            self._add_moving(t, moving[0])
            self._add_moving(t + 1, moving[1])
        self.cache[t] = entry.to_tensors()
        self.computed += 1
        del raw_f, raw_b, moving, images
        release_freed_memory()  # the full-frame temporaries of this pair (see ops)
        return entry

    def _complete(
        self, t: int, raw_f: torch.Tensor, raw_b: torch.Tensor, h0: torch.Tensor, h1: torch.Tensor,
        c0: torch.Tensor, c1: torch.Tensor, images: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[_Pair, tuple[torch.Tensor, torch.Tensor] | None]:  # fmt: skip
        """The pair (t, t+1) from its raw flows (2,H,W) and holes (H,W): flows completed in the holes
        grown by the margin, their trust, cropped to the holes' boxes; and with ``images`` (frames t
        and t+1) the two frames' pixels that move on their own (ghost_check). Computes only."""
        m0 = dilate(c0, self.cfg.flow_mask_dilation)
        m1 = dilate(c1, self.cfg.flow_mask_dilation)
        # Always re-complete inside the hole grown by the margin, even for a FlowSet already filled
        # in the plain mask: flow near the object's edge carries the object's own motion.
        fwd = complete_flow(raw_f, m0, self.cfg.flow_fill, seed=t)
        bwd = complete_flow(raw_b, m1, self.cfg.flow_fill, seed=t + 1)
        err_f = fb_error(fwd[None], bwd[None])[0]
        err_b = fb_error(bwd[None], fwd[None])[0]
        trust_f, trust_b = self._trust(fwd, err_f, m0), self._trust(bwd, err_b, m1)
        moving = None
        if images is not None:
            moving = (
                self._moving(images[0], images[1], h0, h1, fwd),
                self._moving(images[1], images[0], h1, h0, bwd),
            )
        box_t, box_t1 = hole_box(h0), hole_box(h1)
        entry = _Pair(
            _crop(fwd, box_t), _crop(bwd, box_t1), _crop(trust_f, box_t), _crop(trust_b, box_t1),
            box_t, box_t1,
        )  # fmt: skip
        return entry, moving

    def evict_before(self, t: int) -> None:
        self.cache.drop_below(t)
        if self.guide is not None:
            self.guide.evict_before(t)
        for k in [k for k in self.moving_bits if k < t]:
            del self.moving_bits[k]


def _crop(x: torch.Tensor, box: Box | None) -> torch.Tensor | None:
    """The ``box`` region of ``(..., H, W)`` as its own tensor (None without a box)."""
    if box is None:
        return None
    y0, y1, x0, x1 = box
    return x[..., y0:y1, x0:x1].clone()


def _known_state(frame: torch.Tensor, hole: torch.Tensor, is_key: bool) -> torch.Tensor:
    """State (7,H,W): colour (3), valid, age, from-keyframe, filled; known pixels valid at age 0.

    "filled" marks colours that no frame showed: the fill of never-seen pixels, carried on through
    time (``unseen_fill="carried"``); a colour some frame showed always wins over one.
    """
    # Written channel by channel into one tensor: no full-size temporaries (a 4K state is 232 MB).
    state = torch.empty((7, *hole.shape[-2:]), dtype=torch.float32, device=hole.device)
    known = torch.sub(1.0, hole, out=state[3])
    torch.mul(frame.permute(2, 0, 1)[:3], known, out=state[:3])
    state[4].zero_()
    torch.mul(known, float(is_key), out=state[5])
    state[6].zero_()
    return state


def _carry_fill(state: torch.Tensor, filled: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """``state`` (7,H,W) with the never-seen pixels' fill (``filled`` (H,W,3) where ``unseen``) as
    valid, "filled" colours that the next frames take through the flow."""
    u = unseen > 0.5
    state = state.clone()
    state[:3] = torch.where(u[None], filled.permute(2, 0, 1), state[:3])
    state[3] = torch.where(u, 1.0, state[3])
    state[4] = torch.where(u, 1.0, state[4])
    state[5] = torch.where(u, 0.0, state[5])
    state[6] = torch.where(u, 1.0, state[6])
    return state


@dataclass
class PackedState:
    """A frame's propagation state stored by its hole's box: outside the box the state is always the
    frame's known state (:func:`_known_state`), so the patch and the frame give it back exactly.

    box: (y0, y1, x0, x1) of the frame's hole, or None (no hole: the known state); patch: the state
    (6, y1 - y0, x1 - x0) inside the box.
    """

    box: Box | None
    patch: torch.Tensor | None
    moving: torch.Tensor | None = None  # the frame's known pixels moving on their own (ghost_check)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For a file (safetensors): empty when there is no box."""
        out = {} if self.moving is None else {"moving": self.moving}
        if self.box is None:
            return out
        return {**out, "box": torch.tensor(self.box, dtype=torch.int64), "patch": self.patch.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor] | None) -> PackedState:
        tensors = tensors or {}
        moving = tensors.get("moving")
        if "box" not in tensors:
            return cls(None, None, moving)
        y0, y1, x0, x1 = (int(v) for v in tensors["box"].tolist())
        return cls((y0, y1, x0, x1), tensors["patch"].float(), moving)


def _pack(state: torch.Tensor, box: Box | None) -> PackedState:
    return PackedState(box, _crop(state, box))


def _unpack(packed: PackedState, frame: torch.Tensor, hole: torch.Tensor, is_key: bool) -> torch.Tensor:
    state = _known_state(frame, hole, is_key)
    if packed.box is not None:
        y0, y1, x0, x1 = packed.box
        state[:, y0:y1, x0:x1] = packed.patch
    return state


def _step(
    prev: torch.Tensor,
    flow_to_prev: torch.Tensor,
    trust: torch.Tensor,
    frame: torch.Tensor,
    hole: torch.Tensor,
    is_key: bool,
    box: Box,
    valid_threshold: float = 0.999,
) -> torch.Tensor:
    """One link of the chain: the new frame's hole pixels take the previous state's through the flow.

    prev: (7,H,W) state of the neighbour frame; flow_to_prev: (2,h,w) flow new -> neighbour over the
    new frame's hole ``box``; trust: (h,w) bool where that flow is consistent. Returns the new frame's
    state (7,H,W); only the box can differ from the known state. Colours some frame showed are taken
    on their own wherever they suffice (as if there were no carried fills); carried fills only where
    they do not.
    """
    state = _known_state(frame, hole, is_key)
    y0, y1, x0, x1 = box
    sampled = warp(prev[None], flow_to_prev[None], box=box)[0]
    can = trust & (hole[y0:y1, x0:x1] > 0.5)
    ok = (sampled[3] >= valid_threshold) & can
    filled = torch.zeros_like(ok)
    if bool(prev[6].any()):
        real = warp((prev[:6] * (1.0 - prev[6:7]))[None], flow_to_prev[None], box=box)[0]
        ok_real = (real[3] >= valid_threshold) & can
        filled = ok & ~ok_real
        sampled = torch.where(ok_real[None], real, sampled[:6])
    okf = ok.float()
    sub = state[:, y0:y1, x0:x1]  # a view: updated in place
    color = sampled[:3] / sampled[3:4].clamp_min(1e-6)  # undo the premultiplied bilinear weights
    sub[:3] = sub[:3] * (1 - okf) + color * okf
    sub[3] = torch.maximum(sub[3], okf)
    sub[4] = sub[4] * (1 - okf) + (sampled[4] + 1.0) * okf
    sub[5] = sub[5] * (1 - okf) + (sampled[5] >= 0.5).float() * okf
    sub[6] = filled.float()
    return state


def _check_seen(filled: torch.Tensor, to_fill: torch.Tensor, t: int) -> None:
    """Known and propagated pixels of frame ``t`` (the rest is filled next): NaN there is a broken input."""
    seen = torch.where(to_fill[..., None] > 0, 0.0, filled)
    check_finite_result(seen, f"images: frame {t}", "check the node or files that made the frames")


def _blend(fwd: torch.Tensor, bwd: torch.Tensor, frame: torch.Tensor, hole: torch.Tensor):
    """Combine forward/backward candidates. Returns (filled (H,W,3), unseen (H,W), to_fill (H,W)):
    ``unseen`` = hole pixels no frame showed; ``to_fill`` = those without a carried fill either.
    Computed over the hole's box only (no hole pixel lies outside it): a 4K frame's full-size
    temporaries would be most of a streamed job's memory."""
    H, W = hole.shape[-2:]
    out = frame[..., :3].clone()
    unseen, to_fill = torch.zeros(H, W), torch.zeros(H, W)
    box = hole_box(hole)
    if box is not None:
        y0, y1, x0, x1 = box
        region = (slice(y0, y1), slice(x0, x1))
        out[region], unseen[region], to_fill[region] = _blend_region(
            fwd[:, y0:y1, x0:x1], bwd[:, y0:y1, x0:x1], frame[region], hole[region]
        )
    return out, unseen, to_fill


def _blend_region(fwd: torch.Tensor, bwd: torch.Tensor, frame: torch.Tensor, hole: torch.Tensor):
    """:func:`_blend` on a region: states (7,h,w), frame (h,w,3), hole (h,w)."""
    vf, vb = fwd[3] > 0.5, bwd[3] > 0.5
    # Colours some frame showed win over carried fills of never-seen pixels.
    rf, rb = vf & (fwd[6] < 0.5), vb & (bwd[6] < 0.5)
    real = rf | rb
    h = hole > 0.5
    unseen = (h & ~real).float()
    vf = torch.where(real, rf, vf)
    vb = torch.where(real, rb, vb)
    # Keyframe-sourced candidates win over the others.
    kf, kb = vf & (fwd[5] > 0.5), vb & (bwd[5] > 0.5)
    any_key = kf | kb
    vf = torch.where(any_key, kf, vf)
    vb = torch.where(any_key, kb, vb)
    # Nearer in time weighs more: weights 1/age^2 (age >= 1 inside the hole).
    wf = vf.float() / fwd[4].clamp_min(1.0) ** 2
    wb = vb.float() / bwd[4].clamp_min(1.0) ** 2
    wsum = wf + wb
    color = (fwd[:3] * wf + bwd[:3] * wb) / wsum.clamp_min(1e-12)
    seen = wsum > 0
    out = frame[..., :3].permute(2, 0, 1).clone()
    fill = h & seen
    out = torch.where(fill[None], color, out)
    return out.permute(1, 2, 0), unseen, (h & ~seen).float()


@dataclass
class FillStats:
    """Counted while a removal runs (the frames it computed): hole pixels, and those no frame showed."""

    frames: int = 0
    hole_pixels: int = 0
    unseen_pixels: int = 0

    @property
    def unseen_share(self) -> float:
        return self.unseen_pixels / self.hole_pixels if self.hole_pixels else 0.0

    def summary(self) -> str:
        """One line for the node and the CLI."""
        return (
            f"never seen: {100 * self.unseen_share:.1f}% of the hole ({self.unseen_pixels} of "
            f"{self.hole_pixels} pixels in {self.frames} frames) is shown by no frame and was filled"
        )


@dataclass
class Resume:
    """Where an interrupted run continues: ``start`` (the first frame of a chunk, a multiple of
    ``chunk``) and the forward state of frame ``start - 1`` that :func:`propagate_fill` handed to
    its ``on_chunk`` callback. The frames from ``start`` on come out exactly as in a run that was never
    interrupted."""

    start: int
    state: PackedState


class _Relay:
    """A progress callback that remembers its last report, so the first pass of ``flow_passes=2``
    can repeat it (and so see Cancel) without showing progress of its own."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.last: tuple[int, int, str] | None = None

    def __call__(self, done: int, total: int, text: str = "") -> None:
        self.last = (done, total, text)
        self.progress(done, total, text)

    def again(self, *_: object) -> None:
        if self.last is not None:
            self.progress(*self.last)


class _Guide:
    """The first pass of ``flow_passes=2``: the clip propagated as by ``flow_passes=1``, made frame by
    frame as the second pass asks for its frames. Kept per frame is the fill over the hole's box (a
    SpillStore: within the budget in memory, beyond it in temporary files), from ``keep_from`` on and
    until the second pass is past the frame."""

    def __init__(
        self,
        frames: FrameSequence,
        masks: FrameSequence,
        edited: list[int],
        flows: FlowSet | None,
        estimator: FlowEstimator,
        cfg: PropagationConfig,
        keep_from: int,
        progress: ProgressFn | None,
    ) -> None:
        first = replace(cfg, flow_passes=1, memory_mb=max(16, cfg.memory_mb // 2))

        def telea(image: torch.Tensor, to_fill: torch.Tensor) -> torch.Tensor:
            # Telea also where a fill model is given: this fill only guides the flow estimate.
            return telea_fill(image, to_fill, first.telea_radius)

        self.gen = _sweeps(
            frames, masks, edited, flows, None if flows is not None else estimator, first, telea, True,
            progress, 0, None, None, None, None,
        )  # fmt: skip
        self.store = SpillStore(int(cfg.memory_mb * 0.2 * 2**20), "guide")
        self.keep_from, self.made = keep_from, 0

    def _make_until(self, t: int) -> None:
        while self.made <= t:
            k, filled, _, box = next(self.gen)
            self.made = k + 1
            if k >= self.keep_from:
                self.store[k] = {} if box is None else {"fill": _crop(filled.permute(2, 0, 1), box)}

    def apply(self, t: int, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """``image`` (1,H,W,3) of frame ``t`` with its ``hole`` (H,W) pixels from the first pass."""
        self._make_until(t)
        entry = self.store[t]
        box = hole_box(hole)
        if box is None or "fill" not in entry:
            return image
        y0, y1, x0, x1 = box
        image = image.clone()  # .float() of a float frame is the frame itself: never write into it
        sub = image[0, y0:y1, x0:x1]
        image[0, y0:y1, x0:x1] = torch.where(
            hole[y0:y1, x0:x1, None] > 0.5, entry["fill"].permute(1, 2, 0), sub
        )
        return image

    def evict_before(self, t: int) -> None:
        self.store.drop_below(t)

    def close(self) -> None:
        self.gen.close()
        self.store.close()


def propagate_fill(
    frames: FrameSequence,
    masks: FrameSequence,
    sink: FrameSink | None = None,
    edited: Sequence[int] = (),
    flows: FlowSet | None = None,
    estimator: FlowEstimator | None = None,
    config: PropagationConfig | None = None,
    progress: ProgressFn | None = None,
    resume: Resume | None = None,
    on_chunk: Callable[[int, PackedState], None] | None = None,
    fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    stats: FillStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Remove the masked regions of a clip by flow propagation.

    frames: (T,H,W,3) float [0,1] (or a lazy sequence of (H,W,3)); masks: (T,H,W), 1 = hole.
    edited: indices of artist-edited keyframes (fully known, preferred sources).
    flows: a FlowSet from FlowEstimate (used when given), else flows are computed per chunk with
        ``estimator`` (DIS medium by default).
    sink: called as ``sink(t, filled (H,W,3), unseen (H,W))`` for every frame in order; when None,
        the results are gathered and returned as ((T,H,W,3), (T,H,W)).
    resume: continue an interrupted run at a chunk boundary (see :class:`Resume`); frames before
        ``resume.start`` are neither computed nor sunk.
    on_chunk: called as ``on_chunk(end, state)`` after the frames of each chunk ``[.., end)`` have been
        sunk, with the forward state of frame ``end - 1``: what a later run resumes from.
    fill: ``fill(frame (H,W,3), to_fill (H,W)) -> (H,W,3)`` fills the pixels no frame shows (and that
        no carried fill reaches), known pixels unchanged; default OpenCV Telea with ``telea_radius``.
        An image inpainter (LaMa) goes here.
    stats: a :class:`FillStats` counted frame by frame (the share of the hole no frame showed).
    Known pixels are never changed (the output is composited); ``unseen`` marks the pixels that no
    frame showed (filled by Telea). Memory is bounded by the chunk: states and flows are kept only
    over the holes' boxes.
    """
    cfg = config or PropagationConfig()
    T = len(frames)
    if T == 0:
        raise PipelineError("frames: the clip is empty")
    if len(masks) != T:
        raise PipelineError(f"masks: {len(masks)} masks for {T} frames")
    H, W = frames[0].shape[:2]
    if tuple(masks[0].shape[-2:]) != (H, W):
        raise PipelineError(f"masks: mask size {tuple(masks[0].shape[-2:])} differs from frame size {(H, W)}")
    if flows is not None:
        if flows.num_frames != T:
            raise PipelineError(f"flow: computed for {flows.num_frames} frames, the clip has {T}")
    elif estimator is None:
        estimator = FlowEstimator("dis", "medium")
    if cfg.chunk < 1 or cfg.lookahead < 0:
        raise PipelineError("chunk must be >= 1 and lookahead >= 0")
    if cfg.flow_fill not in ("homography", "idw"):
        raise PipelineError(f"flow_fill: '{cfg.flow_fill}' is not one of homography, idw")
    if cfg.unseen_fill not in UNSEEN_FILLS:
        raise PipelineError(f"unseen_fill: '{cfg.unseen_fill}' is not one of {', '.join(UNSEEN_FILLS)}")
    if cfg.flow_passes not in (1, 2):
        raise PipelineError(f"flow_passes: {cfg.flow_passes} is not 1 or 2")
    # Only the default fill (OpenCV, computing only) is watched for Cancel while it runs: a given fill
    # may load a model, which must not go on in the background after a Cancel.
    watch_fill = fill is None
    if fill is None:

        def fill(image: torch.Tensor, to_fill: torch.Tensor) -> torch.Tensor:
            return telea_fill(image, to_fill, cfg.telea_radius)

    start = 0 if resume is None else int(resume.start)
    if start % cfg.chunk or not 0 <= start <= T:
        raise ValueError(f"resume: frame {start} is not the start of a chunk of {cfg.chunk}")
    edited_sorted = sorted({int(e) for e in edited if 0 <= int(e) < T})
    check_known_pixels(masks, "masks", edited_sorted)

    relay = None if progress is None else _Relay(progress)
    guide, main_cfg = None, cfg
    if cfg.flow_passes == 2:
        # The first pass (with the given flows, if any) runs ahead of this one, frame by frame as its
        # flows need them; from frame 0 also when resuming (it is deterministic: the resumed result
        # is the uninterrupted one). This pass estimates its flows on the first pass's fills.
        estimator = estimator or FlowEstimator("dis", "medium")
        guide = _Guide(frames, masks, edited_sorted, flows, estimator, cfg, keep_from=start - 1,
                       progress=None if relay is None else relay.again)  # fmt: skip
        main_cfg = replace(cfg, flow_mask_dilation=min(cfg.flow_mask_dilation, _GUIDED_MARGIN))
        flows = None
    sweeps = _sweeps(
        frames, masks, edited_sorted, flows, estimator, main_cfg, fill, watch_fill, relay, start, resume,
        on_chunk, stats, guide,
    )  # fmt: skip
    results: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if sink is None else None
    try:
        for t, filled, unseen, _ in sweeps:
            if sink is not None:
                sink(t, filled, unseen)
            else:
                results.append((filled, unseen))
    finally:
        sweeps.close()
        if guide is not None:
            guide.close()
    if results is None:
        return None
    if not results:
        return torch.zeros(0, H, W, 3), torch.zeros(0, H, W)
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


def _sweeps(
    frames: FrameSequence,
    masks: FrameSequence,
    edited_sorted: list[int],
    flows: FlowSet | None,
    estimator: FlowEstimator | None,
    cfg: PropagationConfig,
    fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    watch_fill: bool,
    progress: ProgressFn | None,
    start: int,
    resume: Resume | None,
    on_chunk: Callable[[int, PackedState], None] | None,
    stats: FillStats | None,
    guide: _Guide | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, Box | None]]:
    """The two sweeps of :func:`propagate_fill` (inputs checked there), chunk by chunk: yields
    ``(t, filled (H,W,3), unseen (H,W), box)`` for the frames from ``start`` on, in order (``box``:
    of the frame's hole, or None)."""
    T = len(frames)
    H, W = frames[0].shape[:2]
    edited_set = set(edited_sorted)
    # Holes of the frames in the window, kept as the bool crop of their box (a hole lies in its box).
    hole_cache: dict[int, tuple[Box | None, torch.Tensor | None]] = {}

    def hole(t: int) -> torch.Tensor:
        if t not in hole_cache:
            m = masks[t].float()
            h = torch.zeros_like(m) if t in edited_set else dilate(m, cfg.mask_dilation)
            box = hole_box(h)
            hole_cache[t] = (box, _crop(h > 0.5, box))
        box, crop = hole_cache[t]
        full = torch.zeros((H, W))
        if box is not None:
            full[box[0] : box[1], box[2] : box[3]] = crop.float()
        return full

    def frame(t: int) -> torch.Tensor:
        return frames[t][..., :3].float()

    current = [start // cfg.chunk]  # the chunk being worked on, for the ticks inside a pair
    # Cancel is checked during the long per-frame computations too (run_checked), not only between
    # them: at 4K one of them can take seconds.
    watch = None if progress is None else (lambda: tick(current[0]))

    def checked(fn: Callable, *args):
        return run_checked(partial(fn, *args), watch)

    def known(t: int) -> torch.Tensor:
        return checked(_known_state, frame(t), hole(t), t in edited_set)

    pairs = _PairFlows(frames, hole, flows, estimator, cfg, (H, W), tick=watch, guide=guide)
    n_chunks = (T + cfg.chunk - 1) // cfg.chunk
    fwd_state: torch.Tensor | None = None
    if resume is not None and start > 0:
        fwd_state = _unpack(resume.state, frame(start - 1), hole(start - 1), (start - 1) in edited_set)
        pairs.set_moving(start - 1, resume.state.moving)
    done = start

    def tick(ci: int) -> None:
        # Called between frames of both sweeps, so Cancel (raised by the callback) stops promptly.
        report(progress, done, T, f"chunk {ci + 1}/{n_chunks}")

    report(progress, done, T, f"chunk {start // cfg.chunk + 1}/{n_chunks}")
    # Backward states of a chunk, by frame: beyond the budget, in temporary files like the flows.
    bwd_states = SpillStore(int(cfg.memory_mb * 0.4 * 2**20), "states")
    try:
        for ci, a in enumerate(range(0, T, cfg.chunk)):
            if a < start:
                continue
            current[0] = ci
            tick(ci)
            b = min(a + cfg.chunk, T)
            end = min(T, b + cfg.lookahead)
            nxt = bisect.bisect_left(edited_sorted, b)
            if nxt < len(edited_sorted) and edited_sorted[nxt] - b <= cfg.keyframe_reach:
                end = max(end, edited_sorted[nxt] + 1)
            # Backward sweep: from `end - 1` down to `a`; keep the (packed) states of the chunk's frames.
            state = known(end - 1)
            if end - 1 < b:
                bwd_states[end - 1] = _pack(state, hole_box(hole(end - 1))).to_tensors()
            for t in range(end - 2, a - 1, -1):
                tick(ci)
                pair = pairs.get(t)  # flow t -> t+1 lives on frame t's grid
                if pair.box_t is not None:
                    state = checked(
                        _step, pairs.sources(t + 1, state), pair.fwd, pair.trust_fwd, frame(t), hole(t),
                        t in edited_set, pair.box_t, cfg.valid_threshold,
                    )  # fmt: skip
                else:
                    state = known(t)
                if t < b:
                    bwd_states[t] = _pack(state, pair.box_t).to_tensors()
            del state
            # Forward sweep over the chunk, carrying the state from the previous chunk.
            for t in range(a, b):
                box = hole_box(hole(t))
                if fwd_state is None or box is None:
                    fwd_state = known(t)
                else:
                    pair = pairs.get(t - 1)  # flow t -> t-1 lives on frame t's grid
                    fwd_state = checked(
                        _step, pairs.sources(t - 1, fwd_state), pair.bwd, pair.trust_bwd, frame(t), hole(t),
                        t in edited_set, box, cfg.valid_threshold,
                    )  # fmt: skip
                stored = PackedState.from_tensors(bwd_states.pop(t))
                bwd = checked(_unpack, stored, frame(t), hole(t), t in edited_set)
                filled, unseen, to_fill = checked(_blend, fwd_state, bwd, frame(t), hole(t))
                del bwd
                tick(ci)
                if stats is not None:
                    stats.frames += 1
                    stats.hole_pixels += int(hole(t).sum())
                    stats.unseen_pixels += int(unseen.sum())
                checked(_check_seen, filled, to_fill, t)
                if unseen.any():
                    if bool(unseen.all()):
                        raise PipelineError(
                            f"masks: frame {t} is all hole and no other frame shows any of it, so there is "
                            "nothing to fill it from; check its mask (inverted or blank white?)"
                        )
                    if to_fill.any():
                        filled = checked(fill, filled, to_fill) if watch_fill else fill(filled, to_fill)
                        tick(ci)
                    if cfg.unseen_fill == "carried":
                        fwd_state = _carry_fill(fwd_state, filled, unseen)
                yield t, filled, unseen, box
                done += 1
                tick(ci)
            if on_chunk is not None:
                packed = _pack(fwd_state, hole_box(hole(b - 1)))
                packed.moving = pairs.moving_tensor(b - 1)
                on_chunk(b, packed)
            pairs.evict_before(b - 1)
            for k in [k for k in hole_cache if k < b]:
                del hole_cache[k]
    finally:
        pairs.cache.close()
        bwd_states.close()
