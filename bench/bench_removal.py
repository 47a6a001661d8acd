"""Object-removal quality on real footage: the zero-download default vs per-frame OpenCV Telea.

Holes are taken from ANOTHER clip, or are boxes/moved masks, so they do not hide a real object that has
to disappear: the original frames are the ground truth inside them (where a moving object of the scene
passes under a hole, the truth shows it). Hole pixels are set to grey in the input, so no method (and no
flow estimate) sees the truth. Metrics, per case and method:

* PSNR inside the hole over all hole pixels of all frames (``psnr_in_mask``), also split into the part
  that some other frame shows ("seen") and the part no frame shows ("never seen", Telea fallback), split
  by the default's ``unseen`` output;
* SSIM inside the hole: ``kornia.metrics.ssim`` (window 11) of output vs truth, the map averaged over the
  hole pixels (computed on each frame's hole box plus the window's radius: the same values as on the whole
  frame);
* temporal warping error (TWE) inside the hole: output t+1 warped onto t with the truth flow t -> t+1 (DIS
  medium on the original frames), mean |out_t - warp(out_t+1)| in 8-bit levels over hole pixels of
  frame t where that flow is forward-backward consistent (< 1 px); the truth itself gives the floor;
* the share of hole pixels never seen (each propagation row's own ``unseen`` output);
* seconds per frame of each method (the default and the variants include their DIS flow estimation);
* case S (synthetic ``crossing_clip``): ghost copies of the moving object, ``object_copies(out, clip)``
  per frame, summed over frames and the largest in one frame (the truth gives 0).

Rows: per-frame Telea; the default (``propagate_fill``, ``PropagationConfig()``); two oracle rows given
the truth flow (see ORACLE_NOTE); and the variants given with ``--set`` / ``--variant``.

Usage (from the repository root)::

    python bench/bench_removal.py                      # cases A-F and S (about 4-5 minutes on one core)
    python bench/bench_removal.py --quick              # first 24 frames of each case
    python bench/bench_removal.py --cases AD           # a subset
    python bench/bench_removal.py --set consistency=2  # adds the row "default + consistency=2"
    python bench/bench_removal.py --variant c2:consistency=2 --variant fmd24:flow_mask_dilation=24
    python bench/bench_removal.py --sweep              # PropagationConfig grid on cases A and B
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import kornia
import numpy as np
import torch
from common import (
    CAR,
    CAR_LOGO,
    DEFAULT_THREADS,
    OUT_DIR,
    TENNIS,
    THREADS_HELP,
    data_dir,
    frame_files,
    header,
    load_clip,
    load_mask_clip,
    mask_files,
    md_table,
    read_mask,
    require_data,
    save_panel,
    set_threads,
    show_hole,
    text_table,
)

from keyframe_propagation.pipelines import propagate as propagate_module
from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.flow import FlowEstimator, compute_flows
from keyframe_propagation.pipelines.ops import hole_box, warp
from keyframe_propagation.pipelines.propagate import (
    PropagationConfig,
    propagate_fill,
    telea_fill,
)
from keyframe_propagation.pipelines.testing.synthetic import (
    SyntheticClip,
    crossing_clip,
    object_copies,
    psnr_in_mask,
)
from keyframe_propagation.pipelines.types import FlowSet

JUDO = "cutie_judo_480p_keyframe_masks"
CAR_SIZE = (270, 486)  # running_car 972x540 downscaled by 2 (INTER_AREA) for speed
JUDO_SIZE = (240, 427)  # judo 854x480 downscaled by 2 (INTER_AREA)
QUICK_FRAMES = 24
GREY = 0.5
SSIM_WINDOW = 11
REAL = "ABCDEFG"
ALL_CASES = REAL + "S"
D_BOX = (60, 170, 170, 270)  # case D: (y0, y1, x0, x1) on tennis's 432x240 frames
E_BOX = (0.32, 0.85, 0.10, 0.05, 0.65)  # case E: width, height, top, left at frame 0, left at the last
F_BOX = (0.50, 0.56)  # case F: width, height as fractions of the frame, centred
G_BOX = (40, 200, 140, 220)  # case G: (y0, y1, x0, x1) on judo at 427x240

ORACLE_NOTE = (
    "Oracle rows: flows = compute_flows(truth, DIS medium), i.e. DIS on the unmasked original frames, given\n"
    "as a FlowSet with flow_mask_dilation=0 (s/frame: propagation only, those flows are not timed).\n"
    "* 'default, oracle flow': propagate_fill re-completes a given FlowSet inside the hole\n"
    "  (pipelines/propagate.py calls complete_flow for every pair and has no option to skip it); this bench\n"
    "  replaces that call by the identity for this row only (a patch of the name complete_flow in the\n"
    "  propagate module, restored afterwards; pipelines/ is unchanged), so the chains follow the truth flow\n"
    "  inside the hole as is. What is left to the truth is propagation error: chain resampling, occlusion\n"
    "  (fb check), never-seen pixels (Telea), blending.\n"
    "* 'default, truth flow + completion': the same flows, completed as usual (homography + IDW) from the\n"
    "  truth flow around the hole, no margin. Default vs this row = what the flow estimated on the greyed\n"
    "  frames (completed in the hole grown by flow_mask_dilation) costs; this row vs the oracle = what the\n"
    "  completion of a correct surrounding flow costs inside the hole."
)


@dataclass
class Case:
    key: str
    title: str
    how: list[str]
    truth: torch.Tensor  # (T, H, W, 3) original frames
    holes: torch.Tensor  # (T, H, W) 1 = hole
    synthetic: SyntheticClip | None = None  # case S: the clip (object layer for the ghost count)
    _inputs: torch.Tensor | None = field(default=None, repr=False)
    _truth_flows: FlowSet | None = field(default=None, repr=False)

    @property
    def inputs(self) -> torch.Tensor:
        """The frames with the hole greyed out: what the methods get."""
        if self._inputs is None:
            h = self.holes[..., None]
            self._inputs = self.truth * (1 - h) + GREY * h
        return self._inputs

    def truth_flows(self) -> FlowSet:
        """DIS medium flows of the unmasked original frames (computed once per case)."""
        if self._truth_flows is None:
            self._truth_flows = compute_flows(self.truth, FlowEstimator("dis", "medium"))
        return self._truth_flows


def box_holes(T: int, H: int, W: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(T, H, W) holes, frame t = the box ``boxes[t]`` = (y0, y1, x0, x1)."""
    holes = torch.zeros(T, H, W)
    for t, (y0, y1, x0, x1) in enumerate(boxes):
        holes[t, y0:y1, x0:x1] = 1.0
    return holes


def case_a(root: Path, n: int | None) -> Case:
    files, mfiles = frame_files(root, TENNIS), mask_files(root, TENNIS)
    if n:
        files = files[:n]
    player = load_mask_clip(mfiles)
    # Tennis's own masks, time-reversed and flipped horizontally AND vertically: the hole then moves
    # over the banner/fence, away from the player (flipping horizontally only overlaps him ~18 %).
    holes = player.flip(0).flip(1).flip(2).contiguous()[: len(files)]
    player = player[: len(files)]
    overlap = float((holes * player).sum() / holes.sum())
    return Case(
        "A",
        f"{TENNIS}: {len(files)} frames at 432x240",
        [
            "holes: tennis's own masks time-reversed and flipped horizontally and vertically",
            f"(moving hole over banner/fence; {100 * overlap:.1f} % of hole pixels overlap the player's "
            "mask)",
        ],
        load_clip(files),
        holes,
    )


def case_b(root: Path, n: int | None) -> Case:
    mfiles = mask_files(root, TENNIS)
    count = min(len(mfiles), len(frame_files(root, CAR)))
    if n:
        count = min(count, n)
    files = frame_files(root, CAR)[:count]
    return Case(
        "B",
        f"{CAR}: first {count} frames, 972x540 downscaled to {CAR_SIZE[1]}x{CAR_SIZE[0]} (INTER_AREA)",
        ["holes: tennis masks (player + shadow) resized to that size (nearest), same frame order"],
        load_clip(files, CAR_SIZE),
        load_mask_clip(mfiles[:count], CAR_SIZE),
    )


def case_c(root: Path, n: int | None) -> Case:
    files = frame_files(root, CAR)
    if n:
        files = files[:n]
    logo = read_mask(root / CAR / CAR_LOGO, CAR_SIZE)
    return Case(
        "C",
        f"{CAR}: {len(files)} frames, downscaled to {CAR_SIZE[1]}x{CAR_SIZE[0]} (INTER_AREA)",
        [f"hole: static logo {CAR_LOGO} resized (nearest); background revealed by camera motion"],
        load_clip(files, CAR_SIZE),
        logo.expand(len(files), -1, -1).contiguous(),
    )


def case_d(root: Path, n: int | None) -> Case:
    files, mfiles = frame_files(root, TENNIS), mask_files(root, TENNIS)
    if n:
        files = files[:n]
    T = len(files)
    truth = load_clip(files)
    H, W = truth.shape[1:3]
    y0, y1, x0, x1 = D_BOX
    holes = box_holes(T, H, W, [D_BOX] * T)
    player = load_mask_clip(mfiles[:T]) > 0.5
    box = holes[0] > 0.5
    per_frame = (player & box).flatten(1).sum(1).float() / float(box.sum())
    return Case(
        "D",
        f"{TENNIS}: {T} frames at {W}x{H}",
        [
            f"hole: a static {x1 - x0}x{y1 - y0} box (x {x0}-{x1}, y {y0}-{y1}) on the player's path; the "
            "camera pans with him",
            f"the player walks in and out under it: his (dilated) mask covers > 5 % of the box in "
            f"{int((per_frame > 0.05).sum())} of {T} frames, < 1 % in {int((per_frame < 0.01).sum())};",
            f"{100 * float(per_frame.mean()):.1f} % of hole pixels overlap the player's mask "
            "(the truth there is the moving player)",
        ],
        truth,
        holes,
    )


def case_e(root: Path, n: int | None) -> Case:
    all_files = frame_files(root, JUDO)
    files = all_files[:n] if n else all_files
    T, (H, W) = len(files), JUDO_SIZE
    bw, bh, top, left0, left1 = E_BOX
    w, h, y0 = int(bw * W), int(bh * H), int(top * H)
    last = max(len(all_files) - 1, 1)  # the speed is that of the whole clip, also with --quick
    lefts = [int(round((left0 + (left1 - left0) * t / last) * W)) for t in range(T)]
    holes = box_holes(T, H, W, [(y0, y0 + h, x, x + w) for x in lefts])
    step = (left1 - left0) * W / last
    return Case(
        "E",
        f"{JUDO}: {T} frames, 854x480 downscaled to {W}x{H} (INTER_AREA)",
        [
            f"hole: a large {w}x{h} box moving right {step:.0f} px/frame (x {lefts[0]} -> {lefts[-1]}), "
            "sweeping over the two fighters",
            "in the middle of the frame (moving people under a moving hole; static camera)",
        ],
        load_clip(files, JUDO_SIZE),
        holes,
    )


def case_f(root: Path, n: int | None) -> Case:
    files = frame_files(root, CAR)
    if n:
        files = files[:n]
    T, (H, W) = len(files), CAR_SIZE
    w, h = int(F_BOX[0] * W), int(F_BOX[1] * H)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return Case(
        "F",
        f"{CAR}: {T} frames, downscaled to {W}x{H} (INTER_AREA)",
        [
            f"hole: a large static {w}x{h} box in the centre (x {x0}-{x0 + w}, y {y0}-{y0 + h}); fast camera "
            "motion reveals",
            "part of the background; the rally car passes under it (large hole + camera motion + moving car)",
        ],
        load_clip(files, CAR_SIZE),
        box_holes(T, H, W, [(y0, y0 + h, x0, x0 + w)] * T),
    )


def case_g(root: Path, n: int | None) -> Case:
    files = frame_files(root, JUDO)
    if n:
        files = files[:n]
    T, (H, W) = len(files), JUDO_SIZE
    y0, y1, x0, x1 = G_BOX
    holes = box_holes(T, H, W, [G_BOX] * T)
    fighters = read_mask(root / JUDO / "masks" / "00000.png", JUDO_SIZE) > 0.5  # keyframe 0: the two fighters
    cover = float((fighters & (holes[0] > 0.5)).sum()) / float((holes[0] > 0.5).sum())
    return Case(
        "G",
        f"{JUDO}: {T} frames, 854x480 downscaled to {W}x{H} (INTER_AREA)",
        [
            f"hole: a static {x1 - x0}x{y1 - y0} box (x {x0}-{x1}, y {y0}-{y1}) on the fighters' path;",
            "static camera (a tripod watermark): no frame shows the background behind it; the fighters move",
            f"under it (their keyframe-0 mask covers {100 * cover:.0f} % of it in frame 0)",
        ],
        load_clip(files, JUDO_SIZE),
        holes,
    )


def case_s(root: Path | None, n: int | None) -> Case:
    clip = crossing_clip()
    T, H, W = clip.masks.shape
    y0, y1, x0, x1 = hole_box(clip.masks[0])
    hole = clip.masks > 0.5
    under = (hole & (clip.layer > 0.5)).flatten(1).any(1)
    overlap = float((hole & (clip.layer > 0.5)).sum()) / float(hole.sum())
    return Case(
        "S",
        f"synthetic crossing_clip(): {T} frames at {W}x{H} (always the whole clip)",
        [
            f"hole: a static box (x {x0}-{x1}, y {y0}-{y1}); the camera pans 1.5 px/frame, a green disk "
            "moves right 4 px/frame",
            f"and crosses under the hole in {int(under.sum())} of {T} frames ({100 * overlap:.1f} % of hole "
            "pixels show it); ghosts = object_copies(out, clip) per frame: copies of it where it is not",
        ],
        clip.truth,
        clip.masks,
        synthetic=clip,
    )


CASES: dict[str, Callable[[Path | None, int | None], Case]] = {
    "A": case_a, "B": case_b, "C": case_c, "D": case_d, "E": case_e, "F": case_f, "G": case_g, "S": case_s,
}  # fmt: skip
DATA_SETS = {"A": (TENNIS,), "B": (TENNIS, CAR), "C": (CAR,), "D": (TENNIS,), "E": (JUDO,), "F": (CAR,),
             "G": (JUDO,), "S": ()}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


@dataclass
class TruthFlow:
    """Ground-truth flow t -> t+1 (DIS medium on the original frames) and where it is consistent."""

    fwd: torch.Tensor  # (T-1, 2, H, W)
    consistent: torch.Tensor  # (T-1, H, W) bool, fb error < 1 px


def truth_flow_of(flows: FlowSet) -> TruthFlow:
    return TruthFlow(flows.forward, flows.fb_error_forward < 1.0)


def truth_flow(truth: torch.Tensor) -> TruthFlow:
    return truth_flow_of(compute_flows(truth, FlowEstimator("dis", "medium")))


def temporal_error(out: torch.Tensor, holes: torch.Tensor, gt: TruthFlow) -> tuple[float, float]:
    """(mean |out_t - warp(out_t+1)| in 8-bit levels, share of hole pixels where it was measured)."""
    total, count = 0.0, 0
    for t in range(out.shape[0] - 1):
        sel = (holes[t] > 0.5) & gt.consistent[t]
        if not bool(sel.any()):
            continue
        nxt = warp(out[t + 1].permute(2, 0, 1)[None], gt.fwd[t : t + 1])[0].permute(1, 2, 0)
        d = (out[t] - nxt).abs().mean(-1)
        total += float(d[sel].sum())
        count += int(sel.sum())
    hole_px = float((holes[:-1] > 0.5).sum())
    return (255.0 * total / count if count else float("nan")), (count / hole_px if hole_px else 0.0)


def ssim_in_hole(out: torch.Tensor, truth: torch.Tensor, holes: torch.Tensor) -> float:
    """Mean of the SSIM map (kornia, window 11, channel mean) over all hole pixels of the clip.

    Each frame is cropped to its hole box plus the window's radius first: a hole pixel's window lies in
    the crop, and where the crop meets the frame's border, so does the whole frame's (same padding), so
    the values in the hole are those of the whole frame, for a fraction of the cost.
    """
    r = SSIM_WINDOW // 2
    H, W = holes.shape[-2:]
    total, count = 0.0, 0
    for t in range(out.shape[0]):
        box = hole_box(holes[t])
        if box is None:
            continue
        y0, y1, x0, x1 = max(0, box[0] - r), min(H, box[1] + r), max(0, box[2] - r), min(W, box[3] + r)
        a = out[t, y0:y1, x0:x1].permute(2, 0, 1)[None].contiguous()
        b = truth[t, y0:y1, x0:x1].permute(2, 0, 1)[None].contiguous()
        smap = kornia.metrics.ssim(a.clamp(0, 1), b, SSIM_WINDOW)[0].mean(0)
        sel = holes[t, y0:y1, x0:x1] > 0.5
        total += float(smap[sel].sum())
        count += int(sel.sum())
    return total / count if count else float("nan")


def motion_stats(flows: FlowSet, holes: torch.Tensor, thresh: float = 2.0) -> tuple[float, float]:
    """(median camera motion in px/frame, share of hole pixels moving independently).

    Camera motion: a RANSAC homography fitted to the truth flow t -> t+1 of the whole frame (4000 random
    pixels); independent motion: truth flow more than ``thresh`` px away from that homography's flow.
    """
    n, _, H, W = flows.forward.shape
    gy, gx = torch.meshgrid(torch.arange(H).double(), torch.arange(W).double(), indexing="ij")
    gen = torch.Generator().manual_seed(0)
    cams, moving, count = [], 0, 0
    for t in range(n):
        f = flows.forward[t].double()
        idx = torch.randperm(H * W, generator=gen)[:4000]
        src = torch.stack([gx.flatten()[idx], gy.flatten()[idx]], 1)
        dst = src + f.flatten(1)[:, idx].T
        hm, _ = cv2.findHomography(src.numpy(), dst.numpy(), cv2.RANSAC, 1.0)
        if hm is None:
            continue
        hmt = torch.from_numpy(hm)
        den = hmt[2, 0] * gx + hmt[2, 1] * gy + hmt[2, 2]
        cam = torch.stack([(hmt[0, 0] * gx + hmt[0, 1] * gy + hmt[0, 2]) / den - gx,
                           (hmt[1, 0] * gx + hmt[1, 1] * gy + hmt[1, 2]) / den - gy])  # fmt: skip
        cams.append(float(torch.hypot(cam[0], cam[1]).median()))
        sel = holes[t] > 0.5
        resid = torch.hypot(f[0] - cam[0], f[1] - cam[1])
        moving += int((resid[sel] > thresh).sum())
        count += int(sel.sum())
    return (float(np.median(cams)) if cams else float("nan")), (moving / count if count else float("nan"))


def ghost_counts(out: torch.Tensor, clip: SyntheticClip) -> tuple[int, int]:
    """(sum over frames, max in one frame) of ``object_copies(out, clip)`` (a tensor or list per frame)."""
    per_frame = torch.as_tensor(object_copies(out, clip)).flatten()
    return (int(per_frame.sum()), int(per_frame.max())) if per_frame.numel() else (0, 0)


def telea_clip(inputs: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = torch.stack([telea_fill(inputs[t], holes[t]) for t in range(inputs.shape[0])])
    return out, time.perf_counter() - t0


def run_default(inputs, holes, config=None, flows=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    t0 = time.perf_counter()
    filled, unseen = propagate_fill(inputs, holes, config=config, flows=flows)
    return filled, unseen, time.perf_counter() - t0


def fmt(x: float, nd: int = 2, signed: bool = False) -> str:
    if x != x:  # nan
        return "n/a"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


# ----------------------------------------------------------------------------------------------
# Methods (the rows): each a function (inputs, holes, case) -> (filled, unseen or None, seconds)
# ----------------------------------------------------------------------------------------------

RunFn = Callable[[torch.Tensor, torch.Tensor, Case], tuple[torch.Tensor, "torch.Tensor | None", float]]


@dataclass
class Method:
    name: str  # row label
    run: RunFn
    kind: str  # "telea", "default", "oracle" or "variant"
    short: str = ""  # column label in the summary (variants)
    overrides: dict = field(default_factory=dict)


def run_telea(inputs: torch.Tensor, holes: torch.Tensor, case: Case):
    out, secs = telea_clip(inputs, holes)
    return out, None, secs


def propagate_with(overrides: dict | None = None) -> RunFn:
    """propagate_fill with ``PropagationConfig()`` changed by ``overrides`` (flows estimated by it: DIS)."""
    cfg = dataclasses.replace(PropagationConfig(), **(overrides or {}))

    def run(inputs: torch.Tensor, holes: torch.Tensor, case: Case):
        return run_default(inputs, holes, config=cfg)

    return run


COMPLETION_CALLS = {"patched": 0}


@contextlib.contextmanager
def completion_skipped() -> Iterator[None]:
    """Within the block, propagate_fill uses a given flow inside the hole as is (see ORACLE_NOTE)."""
    original = getattr(propagate_module, "complete_flow", None)
    if original is None:
        yield
        return

    def keep(flow, hole, *args, **kwargs):
        COMPLETION_CALLS["patched"] += 1
        return flow

    propagate_module.complete_flow = keep
    try:
        yield
    finally:
        propagate_module.complete_flow = original


def run_oracle(inputs: torch.Tensor, holes: torch.Tensor, case: Case):
    cfg = dataclasses.replace(PropagationConfig(), flow_mask_dilation=0)
    flows = case.truth_flows()
    before = COMPLETION_CALLS["patched"]
    with completion_skipped():
        out = run_default(inputs, holes, config=cfg, flows=flows)
    if COMPLETION_CALLS["patched"] == before and bool((holes > 0.5).any()):
        print("  WARNING: propagate_fill no longer calls complete_flow by that name: the 'oracle flow' row")
        print("  re-completed the flow in the hole (it is the same as 'truth flow + completion')")
    return out


def run_truth_completed(inputs: torch.Tensor, holes: torch.Tensor, case: Case):
    cfg = dataclasses.replace(PropagationConfig(), flow_mask_dilation=0)
    return run_default(inputs, holes, config=cfg, flows=case.truth_flows())


def build_methods(variants: list[tuple[str, str, dict]], oracle: bool = True) -> list[Method]:
    methods = [Method("per-frame Telea", run_telea, "telea"), Method("default", propagate_with(), "default")]
    if oracle:
        methods += [
            Method("default, oracle flow", run_oracle, "oracle", "oracle"),
            Method("default, truth flow + completion", run_truth_completed, "oracle", "truth+compl"),
        ]
    for name, short, overrides in variants:
        methods.append(Method(name, propagate_with(overrides), "variant", short, overrides))
    return methods


# ----------------------------------------------------------------------------------------------
# Variants from the command line
# ----------------------------------------------------------------------------------------------


def config_fields() -> dict[str, str]:
    """PropagationConfig's field names and their annotations (as strings)."""
    return {f.name: str(f.type) for f in dataclasses.fields(PropagationConfig)}


def parse_value(text: str, annotation: str) -> object:
    """A value of ``key=value``: None, bool, int, float, else the string (quotes stripped)."""
    s = text.strip()
    low = s.lower()
    if low in ("none", "null"):
        return None
    if annotation.replace(" ", "") in ("str", "str|None"):
        return s.strip("'\"")
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        value: object = int(s)
    except ValueError:
        try:
            value = float(s)
        except ValueError:
            return s.strip("'\"")
    if annotation.startswith("bool") and value in (0, 1):
        return bool(value)
    if "float" in annotation and isinstance(value, int):
        return float(value)
    return value


def parse_overrides(items: list[str], where: str) -> dict:
    """``["k=v", ...]`` -> {k: value}; ValueError with a clear message for unknown keys or bad items."""
    fields_ = config_fields()
    out: dict = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{where}: '{item}' is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in fields_:
            raise ValueError(
                f"{where}: '{key}' is not a PropagationConfig field; the fields are: {', '.join(fields_)}"
            )
        out[key] = parse_value(value, fields_[key])
    if not out:
        raise ValueError(f"{where}: no key=value given")
    try:
        check_config(dataclasses.replace(PropagationConfig(), **out))
    except (TypeError, ValueError, PipelineError) as exc:
        raise ValueError(f"{where}: {describe(out)} is refused: {exc}") from exc
    return out


def check_config(cfg: PropagationConfig) -> None:
    """Run ``cfg`` on a tiny clip, so that a value propagate_fill refuses fails before the first case."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 32, 32, 3, generator=gen)
    holes = torch.zeros(3, 32, 32)
    holes[:, 12:20, 12:20] = 1.0
    propagate_fill(frames, holes, config=cfg)


def describe(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def parse_variants(sets: list[str], variants: list[str]) -> list[tuple[str, str, dict]]:
    """``--set`` items (one row) and ``--variant`` specs -> [(row name, column label, overrides)]."""
    out: list[tuple[str, str, dict]] = []
    if sets:
        ov = parse_overrides([p for s in sets for p in s.split(",")], "--set")
        out.append((f"default + {describe(ov)}", "set", ov))
    for spec in variants:
        name, sep, rest = spec.partition(":")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--variant '{spec}': expected NAME:key=value,key=value")
        out.append((name, name, parse_overrides(rest.split(","), f"--variant {name}")))
    fixed = {"per-frame Telea", "default", "default, oracle flow", "default, truth flow + completion",
             "oracle", "truth+compl", "set"}  # fmt: skip
    names = [name for name, _, _ in out[1 if sets else 0 :]]
    dup = sorted({n for n in names if names.count(n) > 1 or n in fixed})
    if dup:
        raise ValueError(f"--variant: names used twice or taken by a fixed row: {', '.join(dup)}")
    return out


# ----------------------------------------------------------------------------------------------
# Main benchmark
# ----------------------------------------------------------------------------------------------


def evaluate(case: Case, methods: list[Method], repeats: int = 1) -> dict:
    T, H, W = case.holes.shape
    print(f"\nCase {case.key}: {case.title}")
    for line in case.how:
        print(f"  {line}")
    hole_share = float(case.holes.mean())
    print(f"  hole: {100 * hole_share:.1f} % of the frame on average; input hole pixels set to grey")
    t0 = time.perf_counter()
    flows = case.truth_flows()
    t_flow = time.perf_counter() - t0
    gt = truth_flow_of(flows)
    cam, moving = motion_stats(flows, case.holes)
    print(
        f"  motion (truth flow): camera {cam:.1f} px/frame (median of a RANSAC homography's flow); "
        f"{100 * moving:.1f} % of hole pixels move > 2 px off it (own motion, or parallax)"
    )

    inputs, hole = case.inputs, case.holes > 0.5
    # The default first: its `unseen` splits every row's PSNR into seen / never-seen parts.
    order = sorted(range(len(methods)), key=lambda i: methods[i].kind != "default")
    stats: dict[str, dict] = {}
    mids: dict[str, torch.Tensor] = {}
    seen_b = unseen_b = None
    for i in order:
        m = methods[i]
        out, unseen, secs = m.run(inputs, case.holes, case)
        for _ in range(repeats - 1):  # timings: best of `repeats` runs (outputs are deterministic)
            secs = min(secs, m.run(inputs, case.holes, case)[2])
        if m.kind == "default":
            unseen_b = (unseen > 0.5) & hole
            seen_b = hole & ~unseen_b
        nan = float("nan")
        s = {
            "psnr": psnr_in_mask(out, case.truth, case.holes),
            "psnr_seen": psnr_in_mask(out, case.truth, seen_b.float()) if seen_b.any() else nan,
            "psnr_unseen": psnr_in_mask(out, case.truth, unseen_b.float()) if unseen_b.any() else nan,
            "ssim": ssim_in_hole(out, case.truth, case.holes),
            "twe": temporal_error(out, case.holes, gt)[0],
            "unseen": nan if unseen is None else float(((unseen > 0.5) & hole).sum()) / float(hole.sum()),
            "spf": secs / T,
        }
        if case.synthetic is not None:
            s["ghost_sum"], s["ghost_max"] = ghost_counts(out, case.synthetic)
        stats[m.name] = s
        mids[m.name] = out[T // 2].clone()  # for the panel
        del out, unseen
    twe_truth, cover = temporal_error(case.truth, case.holes, gt)
    truth_ghosts = None if case.synthetic is None else ghost_counts(case.truth, case.synthetic)

    headers = ["method", "PSNR hole dB", "seen part", "never-seen part", "SSIM hole", "TWE (8-bit)",
               "never seen %", "s/frame"]  # fmt: skip
    if case.synthetic is not None:
        headers += ["ghosts sum", "ghosts max"]
    rows = []
    for m in methods:
        s = stats[m.name]
        row = [m.name, fmt(s["psnr"]), fmt(s["psnr_seen"]), fmt(s["psnr_unseen"]), fmt(s["ssim"], 3),
               fmt(s["twe"]), "" if s["unseen"] != s["unseen"] else f"{100 * s['unseen']:.1f}",
               f"{s['spf']:.3f}"]  # fmt: skip
        if case.synthetic is not None:
            row += [s["ghost_sum"], s["ghost_max"]]
        rows.append(row)
    truth_row = ["ground truth (floor)", "", "", "", "1.000", fmt(twe_truth), "", ""]
    if truth_ghosts is not None:
        truth_row += list(truth_ghosts)
    rows.append(truth_row)
    print(text_table(headers, rows))
    tel, de = stats["per-frame Telea"], stats["default"]
    print(
        f"  default - Telea: {de['psnr'] - tel['psnr']:+.2f} dB PSNR, {de['ssim'] - tel['ssim']:+.3f} SSIM "
        f"in the hole; TWE default/Telea = {de['twe'] / tel['twe']:.2f}x, default/truth = "
        f"{de['twe'] / twe_truth:.2f}x; time default/Telea = {de['spf'] / tel['spf']:.1f}x"
    )
    if "default, oracle flow" in stats:
        o, c = stats["default, oracle flow"], stats["default, truth flow + completion"]
        print(
            f"  PSNR: oracle flow - default = {o['psnr'] - de['psnr']:+.2f} dB (truth flow around the hole "
            f"instead of the estimate {c['psnr'] - de['psnr']:+.2f}, then no completion inside it "
            f"{o['psnr'] - c['psnr']:+.2f}); oracle never seen {100 * o['unseen']:.1f} %"
        )
    print(
        f"  never seen (default): {100 * de['unseen']:.1f} % of hole pixels (filled by Telea inside "
        f"propagate_fill); TWE measured on {100 * cover:.0f} % of hole pixels (truth flow consistent); "
        f"truth flows {t_flow:.1f} s"
    )
    mid = T // 2
    path = save_panel(
        OUT_DIR / f"removal_{case.key}.png",
        [show_hole(case.truth[mid], case.holes[mid])] + [mids[m.name] for m in methods] + [case.truth[mid]],
        [f"input, hole in red (frame {mid})"] + [m.short or m.name for m in methods] + ["truth"],
    )
    print(f"  side by side (input | {' | '.join(m.short or m.name for m in methods)} | truth): {path}")
    case._truth_flows = case._inputs = None  # free the memory before the next case
    return {"case": case.key, "frames": T, "size": f"{W}x{H}", "hole": hole_share, "unseen": de["unseen"],
            "twe_truth": twe_truth, "stats": stats}  # fmt: skip


def verdicts(results: list[dict], methods: list[Method]) -> list[str]:
    """Per propagation row: >= 3 dB over Telea and TWE below Telea on every real case?"""
    real = [r for r in results if r["case"] in REAL]
    if not real:
        return ["  (no real case run: no verdicts)"]
    lines = []
    for m in methods:
        if m.kind == "telea":
            continue
        deltas = {r["case"]: r["stats"][m.name]["psnr"] - r["stats"]["per-frame Telea"]["psnr"] for r in real}
        ratios = {r["case"]: r["stats"][m.name]["twe"] / r["stats"]["per-frame Telea"]["twe"] for r in real}
        d_ok = all(d >= 3.0 for d in deltas.values())
        t_ok = all(x < 1.0 for x in ratios.values())
        cases = "".join(deltas)
        lines.append(
            f"  {m.name}: >= 3 dB over Telea on every real case ({cases}): {'yes' if d_ok else 'no'} "
            f"(" + ", ".join(f"{k} {d:+.2f}" for k, d in deltas.items()) + ")"
        )
        lines.append(
            f"  {m.name}: TWE below Telea on every real case ({cases}): {'yes' if t_ok else 'no'} "
            f"(TWE / Telea's: " + ", ".join(f"{k} {x:.2f}" for k, x in ratios.items()) + ")"
        )
    return lines


def main_cases(root: Path | None, keys: str, n: int | None, repeats: int, methods: list[Method]) -> None:
    cfg = PropagationConfig()
    print(f"default config: {cfg}")
    print(f"rows: {', '.join(m.name for m in methods)}")
    for m in methods:
        if m.kind == "variant":
            print(f"  {m.name}: PropagationConfig() with {describe(m.overrides)}")
    if any(m.kind == "oracle" for m in methods):
        print(ORACLE_NOTE)
    print(f"timings: best of {repeats} run(s) per method")
    results = []
    for k in keys:
        results.append(evaluate(CASES[k](root, n), methods, repeats))
    variants = [m for m in methods if m.kind == "variant"]
    has_oracle = "default, oracle flow" in methods_names(methods)
    headers = ["case", "frames", "size", "hole %", "never seen %", "PSNR Telea", "PSNR default", "delta dB"]
    if has_oracle:
        headers += ["PSNR oracle", "PSNR truth+compl"]
    headers += ["SSIM Telea", "SSIM default", "TWE Telea", "TWE default", "TWE truth", "s/f Telea",
                "s/f default"]  # fmt: skip
    for v in variants:
        headers += [f"{v.short} PSNR", f"{v.short} d", f"{v.short} TWE"]
    rows = []
    for r in results:
        st = r["stats"]
        tel, de = st["per-frame Telea"], st["default"]
        row = [r["case"], r["frames"], r["size"], f"{100 * r['hole']:.1f}", f"{100 * r['unseen']:.1f}",
               fmt(tel["psnr"]), fmt(de["psnr"]), fmt(de["psnr"] - tel["psnr"], signed=True)]  # fmt: skip
        if has_oracle:
            row += [fmt(st[m]["psnr"]) for m in ("default, oracle flow", "default, truth flow + completion")]
        row += [fmt(tel["ssim"], 3), fmt(de["ssim"], 3), fmt(tel["twe"]), fmt(de["twe"]), fmt(r["twe_truth"]),
                f"{tel['spf']:.3f}", f"{de['spf']:.3f}"]  # fmt: skip
        for v in variants:
            s = st[v.name]
            row += [fmt(s["psnr"]), fmt(s["psnr"] - tel["psnr"], signed=True), fmt(s["twe"])]
        rows.append(row)
    print("\nSummary (PSNR in dB and SSIM inside the hole; TWE = temporal warping error in 8-bit levels;")
    print("delta / d = PSNR minus Telea's; s/f = seconds per frame, best of the repeats)")
    print(text_table(headers, rows))
    for v in variants:
        print(f"  {v.short} = PropagationConfig() with {describe(v.overrides)}")
    syn = [r for r in results if r["case"] == "S"]
    if syn:
        st = syn[0]["stats"]
        print("\nS ghosts (object_copies(out, clip) per frame: sum over frames / max in one frame):")
        for m in methods:
            print(f"  {m.name}: {st[m.name]['ghost_sum']} / {st[m.name]['ghost_max']}")
    print("\nVerdicts (real cases only):")
    print("\n".join(verdicts(results, methods)))
    print("\nMarkdown:\n")
    print(md_table(headers, rows))


def methods_names(methods: list[Method]) -> set[str]:
    return {m.name for m in methods}


# ----------------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------------

SWEEP = {"flow_mask_dilation": (8, 15, 24), "consistency": (1.0, 2.0, 4.0), "lookahead": (20, 40)}


def sweep(root: Path, n: int | None) -> None:
    base = PropagationConfig()
    configs = [
        dataclasses.replace(base, flow_mask_dilation=d, consistency=c, lookahead=la)
        for d, c, la in itertools.product(*SWEEP.values())
    ]
    if base not in configs:
        configs.append(base)
    print(f"default config: {base}")
    print(
        "grid: " + ", ".join(f"{k} in {v}" for k, v in SWEEP.items()) + "; other fields at their defaults.\n"
        "Flows (DIS medium, unfilled) are estimated once per case and passed as a FlowSet; propagate_fill\n"
        "fills them per config exactly as when it estimates them itself, so only propagation is re-run."
    )
    per_case = {}
    for key in "AB":
        case = CASES[key](root, n)
        print(f"\nCase {case.key}: {case.title}; {' '.join(case.how)}")
        inputs = case.inputs
        gt = truth_flow(case.truth)
        t0 = time.perf_counter()
        flows = compute_flows(inputs, FlowEstimator("dis", "medium"))
        print(f"  flows: {time.perf_counter() - t0:.1f} s for {inputs.shape[0] - 1} pairs")
        telea, _ = telea_clip(inputs, case.holes)
        stats = {"telea": (psnr_in_mask(telea, case.truth, case.holes), float("nan"),
                           temporal_error(telea, case.holes, gt)[0], float("nan"))}  # fmt: skip
        t0 = time.perf_counter()
        for i, cfg in enumerate(configs):
            filled, unseen, secs = run_default(inputs, case.holes, config=cfg, flows=flows)
            hole = case.holes > 0.5
            uns = float(((unseen > 0.5) & hole).sum()) / max(float(hole.sum()), 1.0)
            stats[i] = (
                psnr_in_mask(filled, case.truth, case.holes),
                uns,
                temporal_error(filled, case.holes, gt)[0],
                secs / inputs.shape[0],
            )
        print(f"  {len(configs)} configs propagated in {time.perf_counter() - t0:.0f} s")
        per_case[key] = stats
    d_idx = configs.index(base)
    headers = ["config (fmd/cons/look)"]
    for key in "AB":
        headers += [f"{key} PSNR", f"{key} d", f"{key} unseen%", f"{key} TWE"]
    headers += ["mean d dB", "s/frame"]
    rows = []
    keys = list(range(len(configs))) + ["telea"]
    for i in keys:
        if i == "telea":
            label = "per-frame Telea"
        else:
            c = configs[i]
            label = f"{c.flow_mask_dilation}/{c.consistency:g}/{c.lookahead}" + (" *" if i == d_idx else "")
        row, deltas, secs = [label], [], []
        for key in "AB":
            p, u, twe, s = per_case[key][i]
            d = p - per_case[key][d_idx][0]
            deltas.append(d)
            secs.append(s)
            row += [fmt(p), fmt(d, signed=True), "" if u != u else f"{100 * u:.1f}", fmt(twe)]
        spf = "" if secs[0] != secs[0] else f"{sum(secs) / 2:.3f}"
        row += [fmt(sum(deltas) / len(deltas), signed=True), spf]
        rows.append(row)
    order = sorted(range(len(configs)), key=lambda i: -sum(per_case[k][i][0] for k in "AB"))
    print("\nSweep (* = current default; d = PSNR minus the default's; TWE = temporal warping error, 8-bit;")
    print("s/frame = propagation only, flows precomputed, mean of A and B)")
    print(text_table(headers, rows))
    best = configs[order[0]]
    print(
        f"\nbest mean PSNR: flow_mask_dilation={best.flow_mask_dilation}, consistency={best.consistency:g}, "
        f"lookahead={best.lookahead} ({rows[order[0]][-2]} dB vs the default)"
    )
    print("\nMarkdown:\n")
    print(md_table(headers, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_FRAMES} frames of each case")
    ap.add_argument("--sweep", action="store_true", help="PropagationConfig grid on cases A and B")
    ap.add_argument("--cases", default=ALL_CASES, help=f"which cases to run (default {ALL_CASES})")
    ap.add_argument("--repeats", type=int, default=1, help="timing runs per method, best kept (default 1)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PropagationConfig field for the extra row 'default + KEY=VALUE,...' (repeatable; all --set "
        "go into that one row); values: None, true/false, int, float or a string",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a named row: propagate_fill with PropagationConfig() changed by KEY=VALUE,... (repeatable)",
    )
    ap.add_argument("--no-oracle", action="store_true", help="leave out the two oracle-flow rows")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=THREADS_HELP)
    args = ap.parse_args()
    keys = "".join(dict.fromkeys(args.cases.upper().replace(",", "")))
    bad = [k for k in keys if k not in CASES]
    if bad or not keys:
        ap.error(f"--cases: unknown case(s) {''.join(bad) or '(none given)'}; the cases are {ALL_CASES}")
    try:
        variants = parse_variants(args.set, args.variant)
    except ValueError as exc:
        ap.error(str(exc))
    if args.sweep:
        keys = "AB"
    sets = sorted({s for k in keys for s in DATA_SETS[k]})
    root = require_data(*sets) if sets else data_dir()
    set_threads(args.threads)
    n = QUICK_FRAMES if args.quick else None
    torch.set_grad_enabled(False)
    header("bench_removal" + (" --sweep" if args.sweep else "") + (" --quick" if args.quick else ""))
    t0 = time.perf_counter()
    if args.sweep:
        sweep(root, n)
    else:
        methods = build_methods(variants, oracle=not args.no_oracle)
        main_cases(root, keys, n, max(1, args.repeats), methods)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
