"""TwoStreamInpaint: remove the masked object from every frame.

Without a model it runs the zero-download flow propagation (pipelines/propagate.py); with a model
(TwoStreamModelLoader) the paper's video protocol (pipelines/two_stream/video.py): the model generates
every n-th frame from keyframes, the frames in between are propagated from the generated ones.
"""

from __future__ import annotations

import contextlib

import torch
from comfy_api.latest import io

from ..pipelines.checks import as_masks
from ..pipelines.clip import LazyClip
from ..pipelines.errors import PipelineError
from ..pipelines.flow import FlowEstimator
from ..pipelines.propagate import FillStats, PackedState, PropagationConfig, Resume, propagate_fill
from ..pipelines.refine.multiscale import Refinable, RefineConfig, frame_filler, pyramid_sizes
from ..pipelines.two_stream.model import TwoStreamGenerator
from ..pipelines.two_stream.video import TwoStreamVideoConfig, parse_offsets, remove_with_model, working_size
from .common import (
    CATEGORY,
    Clip,
    Flow,
    Keyframes,
    TwoStreamModel,
    comfy_progress,
    given,
    module_bytes,
    on_compute_device,
    validation,
)
from .output import ClipOutput, job_fingerprint, module_fingerprint, video_of
from .preview import clip_preview
from .refine import _BYTES_PER_PIXEL as _REFINE_BYTES_PER_PIXEL
from .refine import InpaintModel

# The unseen_fill choices and the PropagationConfig values they stand for.
UNSEEN_FILL_OPTIONS = {"per frame": "per_frame", "carried": "carried"}
_UNSEEN_DEFAULT = "per frame"
_GHOST_DEFAULT = 0.0


class TwoStreamInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_TwoStreamInpaint",
            display_name="Two-Stream Inpaint",
            category=CATEGORY,
            # Not an output node: a graph whose outputs are broken must fail as a whole, not run
            # this part and report success. Its preview is shown whenever it runs.
            description=(
                "Removes the masked region from every frame. Without a model: each hole pixel is taken "
                "from the nearest frames where it is visible (edited keyframes first) by following "
                "consistent optical flow; pixels never visible are filled per frame (Telea). With a "
                "two-stream model: the model generates every n-th frame from keyframes at the given "
                "offsets (and the edited keyframes) at a working resolution, composited into the full "
                "frame; the frames in between are propagated from the generated ones. For sharper "
                "fills at high resolution, follow with Multiscale Refine."
            ),
            inputs=[
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="The clip's frames (B,H,W,3). Leave it and 'masks' unconnected to stream a "
                    "long clip from 'clip' instead.",
                ),
                io.Mask.Input(
                    "masks",
                    optional=True,
                    tooltip="One mask per frame (or one for all), 1 = region to remove.",
                ),
                Keyframes.Input(
                    "keyframes",
                    optional=True,
                    tooltip="From Load Keyframes: edited keyframes are preferred sources.",
                ),
                Flow.Input(
                    "flow",
                    optional=True,
                    tooltip="From Flow Estimate; computed internally (DIS, per chunk) when absent.",
                ),
                TwoStreamModel.Input(
                    "model",
                    optional=True,
                    tooltip="A two-stream model (Two-Stream Model Loader); empty = zero-download flow "
                    "propagation.",
                ),
                io.Int.Input(
                    "chunk",
                    default=20,
                    min=1,
                    max=1000,
                    tooltip="Frames processed together; memory is bounded by the chunk. With a model "
                    "the chunk is generate_every.",
                ),
                io.Int.Input(
                    "lookahead",
                    default=40,
                    min=0,
                    max=1000,
                    tooltip="How far past a chunk the backward propagation starts (frames). With a "
                    "model it starts at the next generated frame.",
                ),
                io.Int.Input(
                    "mask_dilation",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="Grow the masks by this many pixels first (masks that hug the object "
                    "leave a halo).",
                ),
                io.Float.Input(
                    "consistency",
                    default=1.0,
                    min=0.0,
                    max=50.0,
                    step=0.1,
                    tooltip="Flow is trusted where its forward-backward error is below this many "
                    "pixels (plus 5% of its magnitude).",
                ),
                io.Int.Input(
                    "telea_radius",
                    default=5,
                    min=1,
                    max=50,
                    tooltip="Radius of the per-frame fallback for pixels never visible.",
                ),
                io.Int.Input(
                    "generate_every",
                    default=20,
                    min=1,
                    max=200,
                    tooltip="With a model: generate every n-th frame, propagate the rest.",
                ),
                io.String.Input(
                    "keyframe_offsets",
                    default="-40,-20,-10,10,20,40",
                    tooltip="With a model: offsets of the keyframes given to each generated "
                    "frame (edited keyframes are always added).",
                ),
                io.Int.Input(
                    "work_long_side",
                    default=512,
                    min=64,
                    max=4096,
                    step=8,
                    tooltip="With a model: long side of the resolution the model runs at (rounded to "
                    "a multiple of 8, never above the frames'); its fill is upscaled and composited.",
                ),
                Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="A clip read frame by frame (Load Keyframes with stream on): used when "
                    "'images' is not connected. Memory stays that of a chunk whatever the clip's length.",
                ),
                io.String.Input(
                    "output_folder",
                    default="",
                    optional=True,
                    tooltip="Folder under ComfyUI's output folder where the frames (PNG, under their "
                    "input names) and an MP4 are written as they are made. Needed with 'clip'. Queueing "
                    "the same prompt again after Cancel continues from the last complete chunk.",
                ),
                InpaintModel.Input(
                    "fill_model",
                    optional=True,
                    tooltip="An image inpainter (Inpaint Model Loader: LaMa) for the pixels no frame "
                    "shows: it fills them where they first appear and the fill is carried on to the next "
                    "frames with the flow (unseen_fill 'carried'). Empty = OpenCV Telea.",
                ),
                io.Combo.Input(
                    "unseen_fill",
                    options=list(UNSEEN_FILL_OPTIONS),
                    default=_UNSEEN_DEFAULT,
                    optional=True,
                    tooltip="Pixels no frame shows: 'per frame' fills them in every frame on its own; "
                    "'carried' fills them once and carries the fill on with the flow, so it stays put "
                    "from frame to frame (filled again only where the flow breaks). With a fill_model "
                    "always 'carried'.",
                ),
                io.Float.Input(
                    "ghost_check",
                    default=_GHOST_DEFAULT,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Refuse as sources the pixels near the hole that do not move like the "
                    "background (a passer-by): their colour differs by more than this (0-1) from where "
                    "the background's motion puts them in the next or previous frame. Stops ghost "
                    "copies of objects that cross under the hole. 0 = off.",
                ),
                io.Int.Input(
                    "fill_refine_iters",
                    default=0,
                    min=0,
                    max=1000,
                    optional=True,
                    tooltip="With a fill_model: 0 = one plain pass of it; more = refine its fill over "
                    "an image pyramid with this many iterations per level (Multiscale Refine's method "
                    "and other defaults).",
                ),
                io.Boolean.Input(
                    "flow_prefill",
                    default=False,
                    optional=True,
                    tooltip="Estimate the flow on frames whose hole is first filled smoothly from its "
                    "edge, so the flow next to the hole follows the background, not the outline of the "
                    "hole or of the object in it. Often better on hard footage (moving holes, large "
                    "holes). Not used with a connected flow computed beforehand (IMAGE path).",
                ),
                io.Int.Input(
                    "flow_passes",
                    default=1,
                    min=1,
                    max=2,
                    optional=True,
                    tooltip="2 = propagate twice, for about twice the time: the flow is estimated again "
                    "on the frames filled by the first pass, where the hole no longer has edges of its "
                    "own, so more of the hole is filled from other frames. Better on every benchmark "
                    "clip, most where the camera moves. With a connected flow (IMAGE path) the first "
                    "pass uses it and the second estimates with DIS medium.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "filled",
                    display_name="images",
                    tooltip="Frames with the masked region filled; known pixels unchanged.",
                ),
                io.Mask.Output(
                    "unseen",
                    tooltip="1 where no frame showed the background (filled by Telea or fill_model).",
                ),
                Clip.Output(
                    "clip_out",
                    display_name="clip",
                    tooltip="The result as a clip read frame by frame (from the written files when "
                    "output_folder is set), with the input's masks: for Multiscale Refine.",
                ),
                io.Video.Output(
                    "video",
                    display_name="video",
                    tooltip="The result as a VIDEO (the written MP4), for core Save/Preview Video.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        keyframe_offsets: str | None = "-40,-20,-10,10,20,40",
    ) -> bool | str:
        """Checked at queue time: the keyframe_offsets syntax (ComfyUI checks the number ranges)."""
        return validation(cls, {}, lambda: given(keyframe_offsets) and parse_offsets(str(keyframe_offsets)))

    @classmethod
    def execute(
        cls,
        chunk: int,
        lookahead: int,
        mask_dilation: int,
        consistency: float,
        telea_radius: int,
        generate_every: int,
        keyframe_offsets: str,
        work_long_side: int,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        keyframes=None,
        flow=None,
        model=None,
        clip: LazyClip | None = None,
        output_folder: str = "",
        fill_model=None,
        unseen_fill: str = _UNSEEN_DEFAULT,
        ghost_check: float = _GHOST_DEFAULT,
        fill_refine_iters: int = 0,
        flow_prefill: bool = False,
        flow_passes: int = 1,
    ) -> io.NodeOutput:
        if fill_model is not None and not isinstance(fill_model, Refinable):
            raise PipelineError(
                f"fill_model: a {type(fill_model).__name__} cannot fill images; connect Inpaint Model "
                "Loader's model"
            )
        if unseen_fill not in UNSEEN_FILL_OPTIONS:
            raise PipelineError(
                f"unseen_fill: '{unseen_fill}' is not one of {', '.join(UNSEEN_FILL_OPTIONS)}"
            )
        cfg = PropagationConfig(
            chunk=chunk,
            lookahead=lookahead,
            mask_dilation=mask_dilation,
            consistency=consistency,
            telea_radius=telea_radius,
            ghost_check=float(ghost_check) if ghost_check and ghost_check > 0 else None,
            unseen_fill="carried" if fill_model is not None else UNSEEN_FILL_OPTIONS[unseen_fill],
            flow_prefill=bool(flow_prefill),
            flow_passes=int(flow_passes or 1),
        )
        filler = _Filler(fill_model, int(fill_refine_iters or 0))
        video_cfg = None
        if model is not None:
            if not isinstance(model, TwoStreamGenerator):
                raise PipelineError(
                    "model: expected a two-stream model (Two-Stream Model Loader), "
                    f"got {type(model).__name__}"
                )
            video_cfg = TwoStreamVideoConfig(
                generate_every=generate_every,
                keyframe_offsets=parse_offsets(keyframe_offsets),
                work_long_side=work_long_side,
                mask_dilation=mask_dilation,
                propagation=cfg,
            )
        if images is None:
            if clip is None:
                raise PipelineError(
                    "images: connect the clip's frames and masks, or a 'clip' (Load Keyframes with stream on)"
                )
            if masks is not None:
                raise PipelineError(
                    "masks: connected without 'images'; with 'clip' the clip's masks are used"
                )
            return _streamed(cls, clip, keyframes, flow, model, cfg, video_cfg, output_folder, filler)
        if masks is None:
            raise PipelineError("masks: connect one mask per frame (or one for all) with 'images'")
        T, H, W = images.shape[:3]
        masks = as_masks(masks, T, (H, W), "masks")
        if keyframes is not None and keyframes.num_frames not in (0, T):
            raise PipelineError(f"keyframes: describe {keyframes.num_frames} frames, images has {T}")
        edited = keyframes.edited if keyframes is not None else []
        frames = images[..., :3]
        source = LazyClip.from_tensors(frames, masks, keyframes)
        progress = comfy_progress()
        if output_folder.strip():
            # Written as made, as the streamed path; the IMAGE result is kept in memory as before.
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            fp = _fingerprint(source, cfg, video_cfg, flow, model, filler)
            with ClipOutput(source, output_folder, fp, progress) as out:

                def sink(t: int, filled: torch.Tensor, unseen: torch.Tensor) -> None:
                    out.sink(t, filled)
                    kept.append((filled, unseen))

                _run(frames, masks, edited, flow, model, cfg, video_cfg, sink, progress, out, filler)
                result, video, shown, _ = out.finish()
            if len(kept) != T:  # resumed: the earlier frames are on disk
                filled = torch.stack([result.frame(t) for t in range(T)])
                unseen = torch.zeros(T, H, W)
                if kept:
                    unseen[T - len(kept) :] = torch.stack([u for _, u in kept])
            else:
                filled, unseen = torch.stack([f for f, _ in kept]), torch.stack([u for _, u in kept])
            return io.NodeOutput(filled, unseen, result, video, ui=filler.with_text(shown))
        filled, unseen = _run(
            frames, masks, edited, flow, model, cfg, video_cfg, None, progress, None, filler
        )
        fps = _fps(keyframes)
        result = LazyClip.from_tensors(filled, masks, keyframes)
        return io.NodeOutput(
            filled,
            unseen,
            result,
            video_of(filled, fps),
            ui=filler.with_text(clip_preview(cls, filled, fps=fps)),
        )


def _fps(keyframes) -> float:
    return float(getattr(keyframes, "fps", 0.0) or 0.0)


def _fingerprint(clip: LazyClip, cfg, video_cfg, flow, model, filler: _Filler) -> str:
    if isinstance(flow, FlowEstimator):
        flow_fp = ("estimator", flow.name, flow.work_size, flow.raft_iters)
    else:
        flow_fp = "none" if flow is None else (flow.method, flow.num_frames, flow.size, flow.filled)
    parts = ["KFP_TwoStreamInpaint", clip.fingerprint(), cfg, video_cfg, flow_fp, module_fingerprint(model)]
    if filler.model is not None:  # (absent before fill models: earlier progress records still match)
        parts += [module_fingerprint(filler.model), filler.refine_iters]
    return job_fingerprint(*parts)


class _Filler:
    """The fill of never-seen pixels (a fill model, or Telea) and the never-seen share counted."""

    def __init__(self, model, refine_iters: int) -> None:
        self.model, self.refine_iters = model, refine_iters
        self.stats = FillStats()

    @contextlib.contextmanager
    def placed(self, device):
        """The ``fill`` for propagate_fill on ``device`` (None: Telea)."""
        if self.model is None:
            yield None
            return
        yield frame_filler(self.model, RefineConfig(n_iters=self.refine_iters), device=device)

    def with_text(self, ui: dict) -> dict:
        text = self.stats.summary() if self.stats.frames else ""
        if not text:
            return ui
        old = ui.get("text", ())
        return {**ui, "text": (*old, text)}


def _run(
    frames,
    masks,
    edited,
    flow,
    model,
    cfg,
    video_cfg,
    sink,
    progress,
    out: ClipOutput | None,
    filler: _Filler,
):
    """The removal (flow propagation, or the video protocol with a model) over frame sequences,
    resumed from ``out`` when it holds an interrupted job; never-seen pixels filled by ``filler``."""
    resume = on_chunk = None
    if out is not None:
        if out.start:
            resume = Resume(out.start, PackedState.from_tensors(out.state))

        def on_chunk(end: int, state: PackedState) -> None:
            out.on_chunk(end, state.to_tensors())

    estimator = None if flow is not None else FlowEstimator("dis", "medium")
    if isinstance(flow, FlowEstimator):  # Flow Estimate on a streamed clip: its settings, per chunk
        flow, estimator = None, flow
    H, W = int(frames[0].shape[0]), int(frames[0].shape[1])
    models, need = [], 0
    if filler.model is not None:
        fh, fw = pyramid_sizes(H, W, 512, 3, RefineConfig().px_budget)[-1]
        models.append(filler.model)
        need += module_bytes(filler.model) + fh * fw * _REFINE_BYTES_PER_PIXEL
    if model is None:
        placed = on_compute_device(models, need) if models else contextlib.nullcontext(None)
        with placed as device, filler.placed(device) as fill:
            return propagate_fill(
                frames, masks, sink=sink, edited=edited, flows=flow, estimator=estimator, config=cfg,
                progress=progress, resume=resume, on_chunk=on_chunk, fill=fill, stats=filler.stats,
            )  # fmt: skip
    h, w = working_size(H, W, video_cfg.work_long_side)
    n_frames = 1 + len(video_cfg.keyframe_offsets) + len(edited)
    need += module_bytes(model) + h * w * n_frames * _BYTES_PER_PIXEL_PER_FRAME
    with on_compute_device([model, *models], need) as device, filler.placed(device) as fill:
        return remove_with_model(
            frames, masks, model, sink=sink, edited=edited, flows=flow, estimator=estimator, config=video_cfg,
            progress=progress, resume=resume, on_chunk=on_chunk, fill=fill, stats=filler.stats,
        )  # fmt: skip


def _streamed(
    cls, clip: LazyClip, keyframes, flow, model, cfg, video_cfg, folder: str, filler: _Filler
) -> io.NodeOutput:
    """The removal of a clip read frame by frame, written as it is made (see nodes/output.py)."""
    if not isinstance(clip, LazyClip):
        raise PipelineError(f"clip: expected a clip from Load Keyframes, got {type(clip).__name__}")
    if not folder.strip():
        raise PipelineError(
            "output_folder: a streamed clip is written as it is made; give a folder under ComfyUI's output "
            "folder, e.g. keyframe_propagation/removed"
        )
    T = len(clip)
    if flow is not None and not isinstance(flow, FlowEstimator) and flow.num_frames != T:
        raise PipelineError(
            f"flow: computed for {flow.num_frames} frames, the clip has {T}; with a streamed clip leave "
            "'flow' unconnected (flow is computed per chunk)"
        )
    if keyframes is not None and keyframes.num_frames not in (0, T):
        raise PipelineError(f"keyframes: describe {keyframes.num_frames} frames, the clip has {T}")
    edited = clip.keyframes.edited
    progress = comfy_progress()
    unseen_keys: dict[int, torch.Tensor] = {}
    with ClipOutput(clip, folder, _fingerprint(clip, cfg, video_cfg, flow, model, filler), progress) as out:
        if not out.complete:
            window = (video_cfg.generate_every if video_cfg is not None else cfg.chunk) + cfg.lookahead + 2

            def sink(t: int, filled: torch.Tensor, unseen: torch.Tensor) -> None:
                out.sink(t, filled)
                if t in out.keep:
                    unseen_keys[t] = unseen

            _run(
                clip.frames(window),
                clip.masks(window),
                edited,
                flow,
                model,
                cfg,
                video_cfg,
                sink,
                progress,
                out,
                filler,
            )
        result, video, shown, key_frames = out.finish()
    H, W = clip.size
    key_unseen = (
        torch.stack([unseen_keys.get(k, torch.zeros(H, W)) for k in clip.keyframes.indices])
        if (clip.keyframes.indices)
        else torch.zeros(0, H, W)
    )
    text = f"{T} frames written to {out.folder.name}/ and {out.folder.name}.mp4" + (
        f" (resumed at frame {out.start})" if out.start and not out.complete else ""
    )
    shown = filler.with_text({**shown, "text": (text,)})
    return io.NodeOutput(key_frames, key_unseen, result, video, ui=shown)


# Rough activation memory of one model pass per working pixel and keyframe (fp32), used to ask ComfyUI
# to free that much device memory before the model is moved there.
_BYTES_PER_PIXEL_PER_FRAME = 3_000
