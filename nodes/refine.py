"""InpaintModelLoader and MultiscaleRefine: high-resolution refinement of LaMa fills (SPEC B).

The maths is in ``pipelines/refine/``; this module is the ComfyUI glue:
model folder, dtype, device placement, progress/Cancel.
"""

from __future__ import annotations

import contextlib

import torch
from comfy_api.latest import io

from ..pipelines.checks import DTYPES, as_masks
from ..pipelines.clip import LazyClip
from ..pipelines.errors import PipelineError
from ..pipelines.refine.lama import load_lama
from ..pipelines.refine.multiscale import Refinable, RefineConfig, pyramid_sizes, refine_frames
from .common import (
    CATEGORY,
    Clip,
    TwoStreamModel,
    comfy_progress,
    given,
    managed,
    model_file,
    model_files,
    module_bytes,
    on_compute_device,
    torch_dtype,
    validation,
)
from .output import ClipOutput, job_fingerprint, module_fingerprint, video_of

_LAMA_HINT = "put big-lama.pt (or Big-LaMa's best.ckpt) in ComfyUI/models/inpaint"

# LaMa (and other inpainting networks that can be refined), from models/inpaint.
InpaintModel = io.Custom("INPAINT_MODEL")

# Peak activation memory of the refinement per working pixel (Big-LaMa, fp32; bench/bench_refine.py
# measured ~10,000 bytes without and ~4,000 with checkpointing), plus margin: ComfyUI is asked to free
# that much device memory (other models) before a run.
_BYTES_PER_PIXEL = 12_000
_BYTES_PER_PIXEL_CHECKPOINTED = 5_000


class InpaintModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_InpaintModelLoader",
            display_name="Inpaint Model Loader (LaMa)",
            category=CATEGORY,
            description=(
                "Loads a LaMa inpainting generator from ComfyUI/models/inpaint: Big-LaMa's Lightning "
                "best.ckpt, a generator .safetensors (with or without the 'generator.' prefix) or the "
                "TorchScript big-lama.pt (only its weights are read). For Multiscale Refine."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=model_files("inpaint"),
                    tooltip="Weights file in models/inpaint (big-lama.pt, best.ckpt or a .safetensors).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="fp32",
                    tooltip="Precision of the weights. fp32 is the reference; bf16/fp16 halve the memory "
                    "of the weights (the refinement's features stay fp32).",
                ),
            ],
            outputs=[
                InpaintModel.Output(
                    "inpaint_model",
                    display_name="model",
                    tooltip="The LaMa generator, kept on the offload device until a node uses it.",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str | None = "", dtype: str | None = "fp32") -> bool | str:
        """Checked at queue time: the weights file exists and the dtype is one of the options."""
        return validation(
            cls,
            {"dtype": dtype},
            lambda: given(model_name) and model_file("inpaint", str(model_name), _LAMA_HINT),
        )

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        import comfy.model_management as mm

        path = model_file("inpaint", model_name, _LAMA_HINT)
        model = load_lama(path, device=mm.unet_offload_device(), dtype=torch_dtype(dtype))
        managed(model)  # held by ComfyUI's model management from now on
        return io.NodeOutput(model)


class MultiscaleRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_MultiscaleRefine",
            display_name="Multiscale Refine",
            category=CATEGORY,
            description=(
                "High-resolution inpainting: the model fills the hole on a small version of the image, "
                "then, at each larger scale, its internal features are optimised so the fill keeps the "
                "small version's structure and gains the large one's detail (Geomagical's refinement "
                "of LaMa). Put it after any inpainting step with its low-res result as 'guide', or use "
                "it alone. Frames are refined one at a time; Cancel works mid-frame."
            ),
            inputs=[
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip="Images to inpaint (B,H,W,3); the hole's content is ignored. Leave it and "
                    "'mask' unconnected to refine every frame of 'clip' instead.",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Holes to fill: any non-zero value (one mask per image or one for all).",
                ),
                io.MultiType.Input(
                    "model",
                    types=[InpaintModel, TwoStreamModel],
                    tooltip="The inpainting network (Inpaint Model Loader), or any loaded model that "
                    "supports refinement (front/rear split).",
                ),
                io.Image.Input(
                    "guide",
                    optional=True,
                    tooltip="Optional inpainted image (any size, e.g. a low-resolution result of "
                    "another inpainting node) used as the coarsest scale instead of the model's own "
                    "pass; the finer scales follow its structure.",
                ),
                io.Int.Input(
                    "n_iters",
                    default=15,
                    min=0,
                    max=200,
                    tooltip="Forward passes per refined scale (n_iters - 1 optimiser steps; the paper "
                    "uses 15). 0 = one plain pass of the model at the working size.",
                ),
                io.Float.Input(
                    "lr",
                    default=0.002,
                    min=0.00001,
                    max=1.0,
                    step=0.0005,
                    round=0.00001,
                    tooltip="Adam learning rate on the features (paper: 0.002).",
                ),
                io.Int.Input(
                    "min_side",
                    default=512,
                    min=64,
                    max=8192,
                    step=8,
                    tooltip="Short side of the coarsest scale, roughly: scales = 1 + round(log2(short "
                    "side / min_side)). 512 = the resolution LaMa was trained at.",
                ),
                io.Int.Input(
                    "max_scales",
                    default=3,
                    min=1,
                    max=8,
                    tooltip="At most this many pyramid scales (1 = a single plain pass).",
                ),
                io.Int.Input(
                    "px_budget",
                    default=1_800_000,
                    min=65_536,
                    max=64_000_000,
                    step=100_000,
                    tooltip="Larger images are downscaled to this many pixels before refining (memory "
                    "and time grow with it); see output_size for how the result comes back.",
                ),
                io.Boolean.Input(
                    "crop",
                    default=False,
                    tooltip="Speed-up: at the finer scales refine only the hole's bounding box plus "
                    "crop_margin, and paste it back (the coarsest scale still sees the whole image). "
                    "Off = the reference behaviour.",
                ),
                io.Int.Input(
                    "crop_margin",
                    default=128,
                    min=0,
                    max=4096,
                    step=8,
                    tooltip="Context kept around the hole's bounding box in crop mode, in pixels of each "
                    "refined scale.",
                ),
                io.Boolean.Input(
                    "early_stop",
                    default=False,
                    tooltip="Speed-up: stop a scale when the loss stops improving (see patience and "
                    "min_improvement). Off = always n_iters passes (the reference).",
                ),
                io.Int.Input(
                    "patience",
                    default=2,
                    min=1,
                    max=50,
                    tooltip="Early stopping: stop after this many passes in a row without enough "
                    "improvement.",
                ),
                io.Float.Input(
                    "min_improvement",
                    default=0.005,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    round=0.0001,
                    tooltip="Early stopping: a pass must lower the best loss by at least this fraction "
                    "to count as an improvement.",
                ),
                io.Boolean.Input(
                    "checkpointing",
                    default=False,
                    tooltip="Save memory: recompute the network's activations during back-propagation "
                    "(9 segments, as the reference's memory variant); slower, same result.",
                ),
                io.Combo.Input(
                    "precision",
                    options=["fp32", "bf16", "fp16"],
                    default="fp32",
                    tooltip="Compute precision of the refinement passes (autocast). bf16/fp16 are faster "
                    "on recent GPUs and use less memory; fp32 is the reference.",
                ),
                io.Combo.Input(
                    "output_size",
                    options=["input", "working"],
                    default="input",
                    tooltip="input: the result at the input size, known pixels untouched (the fill is "
                    "upscaled if px_budget reduced the image). working: the refined image at the "
                    "reduced working size, as the reference.",
                ),
                Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="A clip read frame by frame (Load Keyframes with stream on, or Two-Stream "
                    "Inpaint's clip): every frame is refined in turn when 'image' is not connected.",
                ),
                io.String.Input(
                    "output_folder",
                    default="",
                    optional=True,
                    tooltip="Folder under ComfyUI's output folder where the refined frames (PNG) and an "
                    "MP4 are written as they are made. Needed with 'clip'. Queueing the same prompt "
                    "again after Cancel continues from the last refined frame.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "refined",
                    display_name="image",
                    tooltip="The refined images (B,H,W,3); outside the mask they equal the input. With "
                    "'clip': the keyframes only.",
                ),
                Clip.Output(
                    "clip_out",
                    display_name="clip",
                    tooltip="The refined frames as a clip read frame by frame, with the input's masks.",
                ),
                io.Video.Output(
                    "video",
                    display_name="video",
                    tooltip="The refined frames as a VIDEO (the written MP4 with 'clip').",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        precision: str | None = "fp32",
        output_size: str | None = "input",
    ) -> bool | str:
        """Checked at queue time: the dropdowns, which this ComfyUI does not check for V3 nodes
        (it checks the number ranges)."""
        return validation(cls, {"precision": precision, "output_size": output_size})

    @classmethod
    def execute(
        cls,
        model,
        n_iters: int,
        lr: float,
        min_side: int,
        max_scales: int,
        px_budget: int,
        crop: bool,
        crop_margin: int,
        early_stop: bool,
        patience: int,
        min_improvement: float,
        checkpointing: bool,
        precision: str,
        output_size: str,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
        clip: LazyClip | None = None,
        output_folder: str = "",
    ) -> io.NodeOutput:
        import comfy.model_management as mm

        if not isinstance(model, Refinable):
            raise PipelineError(
                f"model: a {type(model).__name__} cannot be refined (it has no front/rear split); "
                "connect Inpaint Model Loader's model"
            )
        cfg = RefineConfig(
            n_iters=n_iters,
            lr=lr,
            min_side=min_side,
            max_scales=max_scales,
            px_budget=px_budget,
            checkpoint_segments=9 if checkpointing else 0,
            autocast="none" if precision == "fp32" else precision,
            crop=crop,
            crop_margin=crop_margin,
            early_stop=early_stop,
            patience=patience,
            min_improvement=min_improvement,
        )
        cfg.check()
        if image is None:
            if clip is None:
                raise PipelineError("image: connect the images and masks to refine, or a 'clip'")
            if not isinstance(clip, LazyClip):
                raise PipelineError(f"clip: expected a clip from Load Keyframes, got {type(clip).__name__}")
            if guide is not None:
                raise PipelineError(
                    "guide: a guide goes with 'image'; a streamed clip is refined without one"
                )
            size = clip.size
        else:
            if mask is None:
                raise PipelineError("mask: connect the holes to fill with 'image'")
            mask = as_masks(mask, image.shape[0], tuple(image.shape[1:3]), "mask")
            size = tuple(image.shape[1:3])
        if isinstance(model, torch.nn.Module):
            h, w = pyramid_sizes(*size, min_side, max_scales, px_budget)[-1]
            per_px = _BYTES_PER_PIXEL_CHECKPOINTED if checkpointing else _BYTES_PER_PIXEL
            placed = on_compute_device(model, module_bytes(model) + h * w * per_px)
        else:
            placed = contextlib.nullcontext(mm.get_torch_device())
        restore = output_size != "working"
        with placed as device:
            if image is None:
                return _refine_clip(model, clip, cfg, device, restore, output_folder)
            out = refine_frames(
                model, image, mask, cfg, guides=guide, progress=comfy_progress(), device=device,
                restore_size=restore,
            )  # fmt: skip
        result = LazyClip.from_tensors(out, mask if restore else _resized(mask, out.shape[1:3]))
        return io.NodeOutput(out, result, video_of(out, 0.0))


def _resized(mask: torch.Tensor, size) -> torch.Tensor:
    from ..pipelines.ops import resize_mask

    return resize_mask(mask, tuple(size)).float()


def _refine_clip(
    model, clip: LazyClip, cfg: RefineConfig, device, restore: bool, folder: str
) -> io.NodeOutput:
    """Every frame of a clip read frame by frame, refined in turn and written as it is made."""
    if not folder.strip():
        raise PipelineError(
            "output_folder: a streamed clip is written as it is made; give a folder under ComfyUI's output "
            "folder, e.g. keyframe_propagation/refined"
        )
    if not restore:
        raise PipelineError("output_size: a streamed clip is refined at the input size; set it to 'input'")
    progress = comfy_progress()
    T = len(clip)
    fp = job_fingerprint("KFP_MultiscaleRefine", clip.fingerprint(), cfg, module_fingerprint(model))
    with ClipOutput(clip, folder, fp, progress) as out:
        for t in range(out.start, T):

            def sub(done: int, total: int, text: str, t: int = t) -> None:
                progress(t * total + done, T * total, f"frame {t + 1}/{T}: {text}")

            refined = refine_frames(
                model, clip.frame(t)[None], clip.mask(t)[None], cfg, progress=sub, device=device
            )[0]
            out.sink(t, refined)
            out.on_chunk(t + 1)
        result, video, shown, key_frames = out.finish()
    return io.NodeOutput(key_frames, result, video, ui=shown)


NODE_LIST: list[type[io.ComfyNode]] = [InpaintModelLoader, MultiscaleRefine]
