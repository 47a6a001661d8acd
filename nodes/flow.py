"""FlowEstimate: optical flow of a clip (OpenCV DIS by default, RAFT with weights)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pipelines.checks import as_masks
from ..pipelines.clip import LazyClip
from ..pipelines.errors import PipelineError
from ..pipelines.flow import FlowEstimator, compute_flows, flow_to_color
from ..pipelines.ops import fit_size, resize_frame, resize_mask
from ..pipelines.preview import fit_within
from .common import (
    CATEGORY,
    Clip,
    Flow,
    Keyframes,
    comfy_progress,
    given,
    model_file,
    model_files,
    validation,
    widget_values,
)
from .preview import flow_ui

# Frames of a streamed clip whose flow the node previews (the clip's flow is computed where it is used).
_STREAM_PREVIEW_FRAMES = 8
_STREAM_PREVIEW_SIDE = 1024
_RAFT_HINT = "put a torchvision RAFT state dict (.pth or .safetensors) in ComfyUI/models/optical_flow"


class FlowEstimate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_FlowEstimate",
            display_name="Flow Estimate",
            category=CATEGORY,
            # Not an output node: a graph whose outputs are broken must fail as a whole, not run
            # this part and report success. Its preview is shown whenever it runs.
            description=(
                "Forward and backward optical flow between consecutive frames (and, on request, between "
                "each frame and the keyframes), their forward-backward consistency, and flow completed "
                "inside the masks. Feed it to Two-Stream Inpaint or look at the colour-wheel preview."
            ),
            inputs=[
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="The clip's frames (B,H,W,3). Leave it unconnected with 'clip' (a long "
                    "clip): the flow is then computed per chunk by Two-Stream Inpaint with these settings.",
                ),
                io.Combo.Input(
                    "backend",
                    options=["dis", "raft"],
                    default="dis",
                    tooltip="dis: OpenCV DIS flow, no weights needed. raft: torchvision RAFT, "
                    "needs a weights file in models/optical_flow.",
                ),
                io.Combo.Input(
                    "preset",
                    options=["ultrafast", "fast", "medium"],
                    default="medium",
                    tooltip="DIS quality/speed preset (ignored by RAFT).",
                ),
                io.Int.Input(
                    "work_width",
                    default=0,
                    min=0,
                    max=4096,
                    step=8,
                    tooltip="Estimate flow at this width and rescale it to the frame size "
                    "(the paper uses 256x256); 0 = frame size.",
                ),
                io.Int.Input(
                    "work_height",
                    default=0,
                    min=0,
                    max=4096,
                    step=8,
                    tooltip="Estimate flow at this height; 0 = frame size.",
                ),
                io.Boolean.Input(
                    "fill_masks",
                    default=True,
                    tooltip="Replace flow inside the masks by interpolation from the mask "
                    "boundary (the masked object's own motion is not the background's).",
                ),
                io.Boolean.Input(
                    "keyframe_pairs",
                    default=False,
                    tooltip="Also compute flow between every frame and every keyframe "
                    "(needs 'keyframes'; costs 2 x frames x keyframes estimates).",
                ),
                io.Float.Input(
                    "occlusion_threshold",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Forward-backward error (pixels) above which a pixel is marked "
                    "occluded in the occlusion mask output.",
                ),
                io.Combo.Input(
                    "raft_model",
                    options=model_files("optical_flow", allow_none=True),
                    default="none",
                    tooltip="RAFT weights (torchvision raft_large / raft_small state dict, "
                    ".pth or .safetensors) in models/optical_flow.",
                ),
                io.Int.Input(
                    "raft_iters",
                    default=20,
                    min=1,
                    max=64,
                    tooltip="RAFT refinement iterations (the paper uses 20).",
                ),
                io.Mask.Input("masks", optional=True, tooltip="Masks (1 = hole) where flow is completed."),
                Keyframes.Input("keyframes", optional=True, tooltip="Keyframes for keyframe_pairs."),
                Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="A clip read frame by frame (Load Keyframes with stream on), used when 'images' "
                    "is not connected: 'flow' then carries these settings to Two-Stream Inpaint, which "
                    "computes the flow per chunk; the previews show the first frames.",
                ),
            ],
            outputs=[
                Flow.Output("flow", tooltip="Flow of the clip, for Two-Stream Inpaint."),
                io.Image.Output(
                    "flow_preview", tooltip="Forward flow t->t+1 as a colour wheel (B-1 images)."
                ),
                io.Mask.Output(
                    "occlusion",
                    tooltip="1 where the forward flow t->t+1 is inconsistent "
                    "(occluded or unreliable), B-1 masks.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        backend: str | None = "dis",
        preset: str | None = "medium",
        raft_model: str | None = "none",
    ) -> bool | str:
        """Checked at queue time: the dropdowns and that RAFT has a weights file (ComfyUI checks the
        number ranges of the inputs not declared here)."""
        values = widget_values(locals())

        def raft() -> None:
            if backend == "raft" and given(raft_model):
                model_file("optical_flow", str(raft_model), _RAFT_HINT, "raft_model")

        return validation(cls, values, raft, skip=("raft_model",))

    @classmethod
    def execute(
        cls,
        backend: str,
        preset: str,
        work_width: int,
        work_height: int,
        fill_masks: bool,
        keyframe_pairs: bool,
        occlusion_threshold: float,
        raft_model: str,
        raft_iters: int,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        keyframes=None,
        clip: LazyClip | None = None,
    ) -> io.NodeOutput:
        streamed = images is None
        if streamed:
            if not isinstance(clip, LazyClip):
                raise PipelineError(
                    "images: connect the clip's frames, or a 'clip' (Load Keyframes with stream on)"
                )
            # The flow of a long clip is computed per chunk where it is used; preview its first frames,
            # at most _STREAM_PREVIEW_SIDE wide or high (the preview stays in ComfyUI's cache).
            n = min(len(clip), _STREAM_PREVIEW_FRAMES)
            small = fit_within(*clip.size, _STREAM_PREVIEW_SIDE, _STREAM_PREVIEW_SIDE)
            check = comfy_progress().check  # a 4K frame takes about half a second to read: Cancel between
            shrunk, masks = [], []
            for t in range(n):
                shrunk.append(torch.from_numpy(resize_frame(clip.frame(t).numpy(), small)))
                masks.append(resize_mask(clip.mask(t), small))
                check()
            images, masks = torch.stack(shrunk), torch.stack(masks)
        if images.shape[0] < 2:
            raise PipelineError(f"images: flow needs at least 2 frames, got {images.shape[0]}")
        H, W = images.shape[1:3]
        work = fit_size(H, W, work_width, work_height, 8) if (work_width or work_height) else None
        weights = None
        if backend == "raft":
            weights = model_file("optical_flow", raft_model, _RAFT_HINT, "raft_model")
        est = FlowEstimator(backend, preset, work_size=work, raft_weights=weights, raft_iters=raft_iters)
        if masks is not None:
            masks = as_masks(masks, images.shape[0], (H, W), "masks")
        kf = []
        if keyframe_pairs:
            if keyframes is None:
                raise PipelineError("keyframes: connect LoadKeyframes' keyframes to use keyframe_pairs")
            kf = list(keyframes.indices)
        flows = compute_flows(
            images[..., :3], est, masks=masks, fill_masks=fill_masks, keyframes=[] if streamed else kf,
            progress=comfy_progress(),
        )  # fmt: skip
        preview = flow_to_color(flows.forward)
        occlusion = (flows.fb_error_forward > occlusion_threshold).float()
        shown = flow_ui(cls, flows.forward, occlusion)
        if streamed:
            return io.NodeOutput(est, preview, occlusion, ui=shown)
        # The FLOW object lives as long as ComfyUI caches it: keep the whole clip's consecutive flows
        # in fp16 (half the memory; 0.06 px steps at 100 px). Readers go through flow_pair, which
        # returns float32. Keyframe pairs stay float32 for the model.
        for name in ("forward", "backward", "fb_error_forward", "fb_error_backward"):
            setattr(flows, name, getattr(flows, name).half())
        return io.NodeOutput(flows, preview, occlusion, ui=shown)
