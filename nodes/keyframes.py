"""LoadKeyframes: frames, masks and keyframe indices of a clip."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..pipelines import frames as fr
from ..pipelines.types import Keyframes as KeyframesData
from .common import CATEGORY, Keyframes, comfy_progress, current_node_id, input_roots
from .preview import filmstrip_ui

log = logging.getLogger("keyframe_propagation")


class LoadKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_LoadKeyframes",
            display_name="Load Keyframes",
            category=CATEGORY,
            # An output node: its preview is shown again when ComfyUI reuses the cached result.
            is_output_node=True,
            description=(
                "Loads a clip (frame folder, video file or IMAGE batch), its masks (1 = region to fill) "
                "and the keyframe indices that the other nodes of the pack propagate from."
            ),
            inputs=[
                io.String.Input(
                    "frames",
                    default="",
                    tooltip="Folder of frames or a video file, relative to ComfyUI's input folder "
                    "(e.g. 'my_clip/frames' or 'clip.mp4'). Ignored when 'images' is connected.",
                ),
                io.String.Input(
                    "masks",
                    default="",
                    tooltip="Folder of masks (one per frame, matched by file name, else by order) or one "
                    "mask image used for every frame, relative to the input folder. Non-zero = region to "
                    "fill. Empty: use the 'mask' input, else the frames' alpha channel, else no hole.",
                ),
                io.String.Input(
                    "keyframes",
                    default="0",
                    tooltip="Keyframe indices into the loaded frames: '0,20,40', ranges '0-60:20' "
                    "(start-end:step), negative counts from the end ('-1' = last frame).",
                ),
                io.Int.Input(
                    "frame_cap",
                    default=0,
                    min=0,
                    max=100000,
                    tooltip="Load at most this many frames (after skipping); 0 = all.",
                ),
                io.Int.Input(
                    "skip_first",
                    default=0,
                    min=0,
                    max=100000,
                    tooltip="Skip this many frames at the start of the source.",
                ),
                io.Int.Input(
                    "every_nth",
                    default=1,
                    min=1,
                    max=1000,
                    tooltip="Keep every n-th frame (1 = every frame).",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Resize frames and masks to this width (multiple of 8); 0 keeps "
                    "the aspect ratio from 'height', both 0 = source size.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Resize frames and masks to this height (multiple of 8); 0 keeps "
                    "the aspect ratio from 'width', both 0 = source size.",
                ),
                io.Boolean.Input(
                    "invert_mask", default=False, tooltip="Swap hole and known regions of the masks."
                ),
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="Frames from another node (e.g. a video loader); replaces 'frames'.",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="MASK batch (one per frame, or one for all frames); replaces 'masks'.",
                ),
                io.Image.Input(
                    "edited_keyframes",
                    optional=True,
                    tooltip="Artist-edited images that replace the first keyframes in order; they count "
                    "as fully known and are propagated to the other frames.",
                ),
            ],
            outputs=[
                io.Image.Output("frames_out", display_name="frames", tooltip="The frames (B,H,W,3)."),
                io.Mask.Output(
                    "masks_out", display_name="masks", tooltip="One mask per frame, 1 = region to fill."
                ),
                Keyframes.Output(
                    "keyframes_out",
                    display_name="keyframes",
                    tooltip="Keyframe indices, size, fps and source of the clip.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, frames: str = "", masks: str = "", **kwargs) -> str:
        # Editing a file in the frame or mask folder re-runs the node.
        paths = []
        for p in (frames, masks):
            if p:
                try:
                    paths.append(fr.resolve_user_path(p, input_roots()))
                except Exception:
                    paths.append(p)
        return fr.fingerprint_paths(*paths) + repr(
            sorted((k, str(v)) for k, v in kwargs.items() if not isinstance(v, torch.Tensor))
        )

    @classmethod
    def execute(
        cls,
        frames: str,
        masks: str,
        keyframes: str,
        frame_cap: int,
        skip_first: int,
        every_nth: int,
        width: int,
        height: int,
        invert_mask: bool,
        images: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edited_keyframes: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        notes: list[str] = []
        selected: list[int] | None = None
        if images is not None:
            imgs = images[..., :3].float()
            alpha = images[..., 3] if images.shape[-1] == 4 else None
            total = imgs.shape[0]
            selected = list(range(skip_first, total, every_nth))
            if frame_cap:
                selected = selected[:frame_cap]
            if not selected:
                raise fr.PipelineError(
                    f"images: skip_first={skip_first}, every_nth={every_nth} leave no frame of {total}"
                )
            clip = fr.Clip(
                frames=imgs[selected].clone(),
                alpha=None if alpha is None else alpha[selected].clone(),
                names=[f"{i:05d}" for i in selected],
                fps=0.0,
                source="IMAGE input",
                notes=[],
            )
        else:
            if not frames.strip():
                raise fr.PipelineError(
                    "frames: give a folder or video under the input folder, or connect 'images'"
                )
            path = fr.resolve_user_path(frames.strip(), input_roots(), what="frames")
            clip = fr.load_frames(
                path,
                frame_cap=frame_cap,
                skip_first=skip_first,
                every_nth=every_nth,
                progress=comfy_progress(),
            )
            selected = list(clip.selected)  # indices in the full source, to match masks by order
        notes += clip.notes
        T, H, W = clip.frames.shape[:3]
        if mask is not None:
            msrc = mask
            if mask.ndim == 3 and images is not None and mask.shape[0] == images.shape[0] != T:
                msrc = mask[selected]  # a MASK batch aligned with the full IMAGE batch
        elif masks.strip():
            msrc = fr.resolve_user_path(masks.strip(), input_roots(), what="masks")
        else:
            msrc = None
        m, mnotes = fr.load_masks(
            msrc, T, (H, W), frame_names=clip.names, selected=selected, alpha=clip.alpha, invert=invert_mask
        )
        notes += mnotes
        out_frames, m, rnotes = fr.resize_clip(clip.frames, m, width, height)
        notes += rnotes
        idx = fr.parse_keyframes(keyframes, T)
        edited: list[int] = []
        if edited_keyframes is not None:
            out_frames, m, edited, enotes = fr.apply_edited_keyframes(out_frames, m, edited_keyframes, idx)
            notes += enotes
        kf = KeyframesData(
            indices=idx,
            size=(int(out_frames.shape[1]), int(out_frames.shape[2])),
            fps=clip.fps,
            source=clip.source,
            num_frames=T,
            edited=edited,
            names=list(clip.names),
        )
        for n in notes:
            log.info("LoadKeyframes: %s", n)
        summary = f"{T} frames {kf.size[1]}x{kf.size[0]} from {clip.source}; keyframes {idx}" + (
            f"; edited {edited}" if edited else ""
        )
        shown = {
            **ui.PreviewText("\n".join([summary, *notes])).as_dict(),
            **filmstrip_ui(out_frames, m, idx, clip.source, current_node_id()),
        }
        return io.NodeOutput(out_frames, m, kf, ui=shown)
