"""LoadKeyframes: frames, masks and keyframe indices of a clip."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..pipelines.clip import (
    LazyClip,
    check_holes,
    check_keyframe_syntax,
    check_resize,
    fingerprint_paths,
    open_clip,
    resolve_user_path,
)
from ..pipelines.errors import PipelineError
from .common import (
    CATEGORY,
    NOT_CONNECTED,
    Clip,
    Keyframes,
    comfy_progress,
    current_node_id,
    given,
    input_roots,
    validation,
    widget_values,
)
from .preview import filmstrip_ui

log = logging.getLogger("keyframe_propagation")

_NO_FRAMES = "frames: give a folder or video under the input folder, or connect 'images' or 'video'"


class LoadKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_LoadKeyframes",
            display_name="Load Keyframes",
            category=CATEGORY,
            # Not an output node: a graph whose outputs are broken must fail as a whole, not run
            # this part and report success. Its filmstrip is shown whenever it runs.
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
                    "mask image used for every frame, relative to the input folder. White = region to "
                    "fill (see mask_threshold). Empty: use the 'mask' input, else the frames' alpha "
                    "channel, else no hole.",
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
                io.Video.Input(
                    "video",
                    optional=True,
                    tooltip="A VIDEO (e.g. from core Load Video) as the frames' source; replaces 'frames'. "
                    "Read frame by frame.",
                ),
                io.Boolean.Input(
                    "stream",
                    default=False,
                    optional=True,
                    tooltip="Long clips: read frames and masks only when a node of the pack needs them "
                    "(connect 'clip'), never the whole clip in memory. The frames and masks outputs then "
                    "hold the keyframes only. Off: the whole clip is decoded into the IMAGE output.",
                ),
                io.Float.Input(
                    "mask_threshold",
                    default=0.5,
                    min=0.0,
                    max=0.99,
                    step=0.05,
                    optional=True,
                    tooltip="Where a mask value becomes hole: this fraction of the way from the clip's "
                    "darkest to its brightest mask value (0.5 = half-way, so JPEG noise and feathered "
                    "edges are handled). 0 = any non-zero value is a hole.",
                ),
                io.Boolean.Input(
                    "allow_large_holes",
                    default=False,
                    optional=True,
                    tooltip="Allow frames whose hole covers 95% or more of the frame (otherwise refused: "
                    "such masks are usually inverted or noisy).",
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
                Clip.Output(
                    "clip_out",
                    display_name="clip",
                    tooltip="The clip read frame by frame (frames, masks, keyframes): for Two-Stream "
                    "Inpaint and Multiscale Refine on long clips, and Clip to Images.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        frames: str | None = "",
        masks: str | None = "",
        keyframes: str | None = "0",
        width: int | None = 0,
        height: int | None = 0,
        images=NOT_CONNECTED,
        mask=NOT_CONNECTED,
        video=NOT_CONNECTED,
        mask_threshold: float | None = 0.5,
    ) -> bool | str:
        """Checked at queue time: the keyframe syntax, the sizes (multiples of 8), mask_threshold's
        range and that the frame and mask paths exist unless 'images' / 'video' / 'mask' are connected
        (ComfyUI checks the other inputs' number ranges)."""
        values = widget_values(locals())

        def paths() -> None:
            if images is NOT_CONNECTED and video is NOT_CONNECTED and isinstance(frames, str):
                if not frames.strip():
                    raise PipelineError(_NO_FRAMES)
                resolve_user_path(frames.strip(), input_roots(), what="frames")
            if mask is NOT_CONNECTED and isinstance(masks, str) and masks.strip():
                resolve_user_path(masks.strip(), input_roots(), what="masks")

        def sizes() -> None:
            check_resize(width if given(width) else 0, height if given(height) else 0)

        def syntax() -> None:
            if given(keyframes):
                check_keyframe_syntax(str(keyframes))

        return validation(cls, values, syntax, sizes, paths)

    @classmethod
    def fingerprint_inputs(cls, frames: str = "", masks: str = "", video=None, **kwargs) -> str:
        # Editing a file in the frame or mask folder (or the video file) re-runs the node.
        paths = []
        source = getattr(video, "get_stream_source", None)
        if source is not None and isinstance(source(), str):
            paths.append(source())
        for p in (frames, masks):
            if p:
                try:
                    paths.append(resolve_user_path(p, input_roots()))
                except Exception:
                    paths.append(p)
        return fingerprint_paths(*paths) + repr(
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
        video=None,
        stream: bool = False,
        mask_threshold: float = 0.5,
        allow_large_holes: bool = False,
    ) -> io.NodeOutput:
        if images is not None:
            source = images
        elif video is not None:
            source = video.get_stream_source()  # a file path, or the video's bytes
            source = Path(source) if isinstance(source, str) else source
        elif frames.strip():
            source = resolve_user_path(frames.strip(), input_roots(), what="frames")
        else:
            raise PipelineError(_NO_FRAMES)
        if mask is not None:
            msrc = mask
        elif masks.strip():
            msrc = resolve_user_path(masks.strip(), input_roots(), what="masks")
        else:
            msrc = None
        clip = open_clip(
            source,
            msrc,
            keyframes=keyframes,
            frame_cap=frame_cap,
            skip_first=skip_first,
            every_nth=every_nth,
            width=width,
            height=height,
            invert_mask=invert_mask,
            edited=edited_keyframes,
            mask_threshold=mask_threshold,
            allow_large_holes=allow_large_holes,
            progress=None if images is not None else comfy_progress(),
            holes=stream,
        )
        kf, notes = clip.keyframes, clip.notes
        T, idx, edited = kf.num_frames, kf.indices, kf.edited
        if stream:
            # The keyframes only: the clip itself goes on through 'clip', read frame by frame.
            out_frames = torch.stack([clip.frame(k) for k in idx]) if idx else torch.zeros(0, *kf.size, 3)
            m = torch.stack([clip.mask(k) for k in idx]) if idx else torch.zeros(0, *kf.size)
            strip_frames, strip_masks = clip.frames(reach=1), clip.masks()
        else:
            out_frames, m = clip.materialize(progress=None if images is not None else comfy_progress())
            notes += check_holes(m, kf.names, allow_large_holes, invert_mask, skip=edited)
            strip_frames, strip_masks = out_frames, m
        for n in notes:
            log.info("LoadKeyframes: %s", n)
        summary = f"{T} frames {kf.size[1]}x{kf.size[0]} from {kf.source}; keyframes {idx}" + (
            f"; edited {edited}" if edited else ""
        )
        if stream:
            summary += (
                f"\nstreaming: read frame by frame through 'clip'; the frames output holds the "
                f"{len(idx)} keyframes"
            )
        shown = {
            **ui.PreviewText("\n".join([summary, *notes])).as_dict(),
            **filmstrip_ui(strip_frames, strip_masks, idx, kf.source, current_node_id()),
        }
        return io.NodeOutput(out_frames, m, kf, clip, ui=shown)


class ClipToImages(io.ComfyNode):
    """A clip read frame by frame -> IMAGE and MASK batches: the explicit step into memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_ClipToImages",
            display_name="Clip to Images",
            category=CATEGORY,
            description=(
                "Decodes frames of a clip (Load Keyframes with stream on, or a result clip of Two-Stream "
                "Inpaint or Multiscale Refine) into IMAGE and MASK batches, for nodes of other packs. "
                "Refused with a message when the batch would not fit in the memory that is free."
            ),
            inputs=[
                Clip.Input("clip", tooltip="The clip to decode."),
                io.Int.Input(
                    "start", default=0, min=0, max=1_000_000, tooltip="First frame (index into the clip)."
                ),
                io.Int.Input(
                    "frame_cap",
                    default=0,
                    min=0,
                    max=1_000_000,
                    tooltip="Decode at most this many frames from 'start'; 0 = to the end (refused if "
                    "they do not fit in free memory).",
                ),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The frames (B,H,W,3)."),
                io.Mask.Output("masks", tooltip="Their masks (B,H,W), 1 = hole."),
            ],
        )

    @classmethod
    def execute(cls, clip: LazyClip, start: int, frame_cap: int) -> io.NodeOutput:
        if not isinstance(clip, LazyClip):
            raise PipelineError(f"clip: expected a clip from Load Keyframes, got {type(clip).__name__}")
        T = len(clip)
        if not 0 <= start < T:
            raise PipelineError(f"start: frame {start} is outside the clip's {T} frames (0..{T - 1})")
        stop = T if frame_cap <= 0 else min(T, start + frame_cap)
        clip.check_fits(stop - start, "frame_cap")
        frames = clip.frames(reach=1)
        masks = clip.masks()
        progress = comfy_progress()
        images = torch.empty((stop - start, *clip.size, 3))
        holes = torch.empty((stop - start, *clip.size))
        for i, t in enumerate(range(start, stop)):
            images[i], holes[i] = frames[t], masks[t]
            progress(i + 1, stop - start, f"decoding frame {t}")
        return io.NodeOutput(images, holes)
