"""TwoStreamInpaint: remove the masked object from every frame.

Without a model it runs the zero-download flow propagation (pipelines/propagate.py); with a model
(TwoStreamModelLoader) the paper's video protocol (pipelines/two_stream/video.py): the model generates
every n-th frame from keyframes, the frames in between are propagated from the generated ones.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pipelines.checks import as_masks
from ..pipelines.errors import PipelineError
from ..pipelines.flow import FlowEstimator
from ..pipelines.propagate import PropagationConfig, propagate_fill
from ..pipelines.two_stream.model import TwoStreamGenerator
from ..pipelines.two_stream.video import TwoStreamVideoConfig, parse_offsets, remove_with_model, working_size
from .common import (
    CATEGORY,
    Flow,
    Keyframes,
    TwoStreamModel,
    comfy_progress,
    given,
    module_bytes,
    on_compute_device,
    validation,
)
from .preview import clip_preview


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
                io.Image.Input("images", tooltip="The clip's frames (B,H,W,3)."),
                io.Mask.Input("masks", tooltip="One mask per frame (or one for all), 1 = region to remove."),
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
            ],
            outputs=[
                io.Image.Output(
                    "filled",
                    display_name="images",
                    tooltip="Frames with the masked region filled; known pixels unchanged.",
                ),
                io.Mask.Output(
                    "unseen", tooltip="1 where no frame showed the background (filled per frame)."
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
        images: torch.Tensor,
        masks: torch.Tensor,
        chunk: int,
        lookahead: int,
        mask_dilation: int,
        consistency: float,
        telea_radius: int,
        generate_every: int,
        keyframe_offsets: str,
        work_long_side: int,
        keyframes=None,
        flow=None,
        model=None,
    ) -> io.NodeOutput:
        T, H, W = images.shape[:3]
        masks = as_masks(masks, T, (H, W), "masks")
        if keyframes is not None and keyframes.num_frames not in (0, T):
            raise PipelineError(f"keyframes: describe {keyframes.num_frames} frames, images has {T}")
        cfg = PropagationConfig(
            chunk=chunk,
            lookahead=lookahead,
            mask_dilation=mask_dilation,
            consistency=consistency,
            telea_radius=telea_radius,
        )
        edited = keyframes.edited if keyframes is not None else []
        if model is not None:
            video_cfg = TwoStreamVideoConfig(
                generate_every=generate_every,
                keyframe_offsets=parse_offsets(keyframe_offsets),
                work_long_side=work_long_side,
                mask_dilation=mask_dilation,
                propagation=cfg,
            )
            out, unseen = _run_model(model, images[..., :3], masks, edited, flow, video_cfg)
            return io.NodeOutput(out, unseen, ui=clip_preview(cls, out, fps=_fps(keyframes)))
        out, unseen = propagate_fill(
            images[..., :3],
            masks,
            edited=edited,
            flows=flow,
            estimator=None if flow is not None else FlowEstimator("dis", "medium"),
            config=cfg,
            progress=comfy_progress(),
        )
        return io.NodeOutput(out, unseen, ui=clip_preview(cls, out, fps=_fps(keyframes)))


def _fps(keyframes) -> float:
    return float(getattr(keyframes, "fps", 0.0) or 0.0)


# Rough activation memory of one model pass per working pixel and keyframe (fp32), used to ask ComfyUI
# to free that much device memory before the model is moved there.
_BYTES_PER_PIXEL_PER_FRAME = 3_000


def _run_model(model, images, masks, edited, flow, cfg: TwoStreamVideoConfig):
    """The video protocol with the model on ComfyUI's compute device, moved back afterwards."""
    if not isinstance(model, TwoStreamGenerator):
        raise PipelineError(
            f"model: expected a two-stream model (Two-Stream Model Loader), got {type(model).__name__}"
        )
    h, w = working_size(int(images.shape[1]), int(images.shape[2]), cfg.work_long_side)
    n_frames = 1 + len(cfg.keyframe_offsets) + len(edited)
    with on_compute_device(model, module_bytes(model) + h * w * n_frames * _BYTES_PER_PIXEL_PER_FRAME):
        return remove_with_model(
            images,
            masks,
            model,
            edited=edited,
            flows=flow,
            estimator=None if flow is not None else FlowEstimator("dis", "medium"),
            config=cfg,
            progress=comfy_progress(),
        )
