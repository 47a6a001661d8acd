"""ReverseSVDLoader and DualDirectionalSampler: generative inbetweening between keyframes with SVD.

Models: SVD img2vid-xt as a diffusers folder (``models/diffusers``) or ``svd_xt.safetensors``
(``models/checkpoints``); reverse-motion weights as a compact delta file or a fine-tuned UNet folder in
``models/reverse_motion`` (registered here) plus, for the UNet folder, the img2vid UNet it was
fine-tuned from (``base_unet``). The heavy imports (diffusers, transformers) happen when a node runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..pipelines.errors import PipelineError
from ..pipelines.svd.folders import is_svd_folder, is_unet_folder
from .common import (
    CATEGORY,
    NO_MODEL,
    Keyframes,
    comfy_progress,
    given,
    load_on_compute_device,
    managed,
    unload,
    validation,
    widget_values,
)
from .preview import clip_preview

log = logging.getLogger("keyframe_propagation")

SVDInbetweenModel = io.Custom("SVD_INBETWEEN_MODEL")

REVERSE_FOLDER = "reverse_motion"  # registered with the other model folders (common.MODEL_FOLDERS)

_NO_SVD = (
    "svd_model: no SVD found; put stable-video-diffusion-img2vid-xt (diffusers folder) in "
    "models/diffusers or svd_xt.safetensors in models/checkpoints"
)


# ----------------------------------------------------------------------------------------------
# Model lists (options "diffusers/<folder>", "checkpoints/<file>", "reverse_motion/<file or folder>")
# ----------------------------------------------------------------------------------------------
def _walk_folders(kind: str, marker) -> list[str]:
    out = []
    try:
        roots = folder_paths.get_folder_paths(kind)
    except Exception:
        roots = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _files in os.walk(root, followlinks=True):
            if marker(Path(dirpath)):
                out.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames.clear()  # a model folder's subfolders are its parts
    return sorted(set(out))


def _files(kind: str, exts: tuple[str, ...] = (".safetensors",)) -> list[str]:
    try:
        return [f for f in folder_paths.get_filename_list(kind) if f.lower().endswith(exts)]
    except Exception:
        return []


def svd_options() -> list[str]:
    opts = [f"diffusers/{p}" for p in _walk_folders("diffusers", is_svd_folder)]
    ckpts = _files("checkpoints")
    # SVD checkpoints first: the checkpoints folder usually holds image models too.
    ckpts.sort(key=lambda f: (0 if "svd" in f.lower() else 1, f.lower()))
    opts += [f"checkpoints/{f}" for f in ckpts]
    return opts or [NO_MODEL]


def reverse_options() -> list[str]:
    files = [f"{REVERSE_FOLDER}/{f}" for f in _files(REVERSE_FOLDER)]
    folders = [f"{REVERSE_FOLDER}/{p}" for p in _walk_folders(REVERSE_FOLDER, is_unet_folder)]
    folders += [f"diffusers/{p}" for p in _walk_folders("diffusers", is_unet_folder)]
    return [NO_MODEL, *files, *folders]


def base_options() -> list[str]:
    opts = [f"diffusers/{p}" for p in _walk_folders("diffusers", is_svd_folder)]
    opts += [f"diffusers/{p}" for p in _walk_folders("diffusers", is_unet_folder)]
    opts += [f"checkpoints/{f}" for f in _files("checkpoints")]
    return [NO_MODEL, *sorted(set(opts), key=str.lower)]


def resolve_option(option: str, what: str) -> Path:
    """'<kind>/<relative path>' -> an existing path inside that ComfyUI model folder."""
    kind, _, rel = option.partition("/")
    if not rel or kind not in ("diffusers", "checkpoints", REVERSE_FOLDER):
        raise PipelineError(
            f"{what}: {option!r} is not a model of the diffusers, checkpoints or {REVERSE_FOLDER} folders"
        )
    for root in folder_paths.get_folder_paths(kind):
        root_abs = os.path.abspath(root)
        path = os.path.abspath(os.path.join(root_abs, rel))
        if os.path.commonpath([root_abs, path]) != root_abs:
            raise PipelineError(f"{what}: {option!r} points outside the {kind} folder")
        if os.path.exists(path):
            return Path(path)
    raise PipelineError(f"{what}: {rel} not found in ComfyUI's models/{kind} folders")


@dataclass
class LoadedInbetween:
    """What flows on the SVD_INBETWEEN_MODEL wire: the model and the offload policy. Its three parts
    are held by ComfyUI's model management (:meth:`patchers`)."""

    model: object  # pipelines.svd.InbetweenModel
    offload: bool = False

    def patchers(self) -> dict[str, object]:
        """A ModelPatcher per part: the UNet (with the 32 reverse tensors), the VAE, the image encoder."""
        m = self.model
        return {
            "unet": managed(m.unet, m.state.reverse),
            "vae": managed(m.vae),
            "image_encoder": managed(m.image_encoder),
        }


# ----------------------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------------------
class ReverseSVDLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_ReverseSVDLoader",
            display_name="Reverse SVD Loader",
            category=CATEGORY,
            description=(
                "Loads Stable Video Diffusion img2vid-xt and the reverse-motion weights for generative "
                "inbetweening. One UNet is held; the reverse model adds only its 32 changed attention "
                "tensors. Without reverse weights the reverse branch uses the forward weights (two-run "
                "averaging)."
            ),
            inputs=[
                io.Combo.Input(
                    "svd_model",
                    options=svd_options(),
                    tooltip="SVD img2vid-xt: a diffusers folder in models/diffusers or svd_xt.safetensors "
                    "in models/checkpoints.",
                ),
                io.Combo.Input(
                    "reverse_weights",
                    options=reverse_options(),
                    default=NO_MODEL,
                    tooltip="Reverse-motion weights: a compact delta .safetensors in models/reverse_motion "
                    "(see the extract-reverse-delta command), or the released fine-tuned UNet folder "
                    "(then set base_unet). none = reverse branch with the forward weights.",
                ),
                io.Combo.Input(
                    "base_unet",
                    options=base_options(),
                    default=NO_MODEL,
                    tooltip="Only for a fine-tuned UNet folder: the UNet it was fine-tuned from (SVD "
                    "img2vid, 14 frames: its diffusers folder or svd.safetensors); the difference is "
                    "added to img2vid-xt.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=["fp16", "bf16", "fp32"],
                    default="fp16",
                    tooltip="Weight precision (fp16 halves memory; fp32 on CPU).",
                ),
                io.Boolean.Input(
                    "offload",
                    default=False,
                    tooltip="Keep the parts that are not working (image encoder, UNet, VAE) on the CPU "
                    "during sampling: lower GPU memory, some transfer time.",
                ),
            ],
            outputs=[
                SVDInbetweenModel.Output(
                    "svd_inbetween_model",
                    display_name="model",
                    tooltip="SVD with forward and reverse-motion weights, for Dual-Directional Sampler.",
                )
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        svd_model: str | None = "",
        reverse_weights: str | None = NO_MODEL,
        base_unet: str | None = NO_MODEL,
        dtype: str | None = "fp16",
    ) -> bool | str:
        """Checked at queue time: the model files exist and the dtype is one of the options."""

        def files() -> None:
            if given(svd_model):
                if not svd_model or svd_model == NO_MODEL:
                    raise PipelineError(_NO_SVD)
                resolve_option(str(svd_model), "svd_model")
            for name, value in (("reverse_weights", reverse_weights), ("base_unet", base_unet)):
                if given(value) and value and value != NO_MODEL:
                    resolve_option(str(value), name)

        return validation(cls, {"dtype": dtype}, files)

    @classmethod
    def execute(
        cls, svd_model: str, reverse_weights: str, base_unet: str, dtype: str, offload: bool
    ) -> io.NodeOutput:
        from ..pipelines.svd.loading import load_reverse, load_svd

        if not svd_model or svd_model == NO_MODEL:
            raise PipelineError(_NO_SVD)
        model = load_svd(resolve_option(svd_model, "svd_model"), dtype)
        if reverse_weights and reverse_weights != NO_MODEL:
            base = resolve_option(base_unet, "base_unet") if base_unet and base_unet != NO_MODEL else None
            load_reverse(model, resolve_option(reverse_weights, "reverse_weights"), base)
        log.info("ReverseSVDLoader: %s", model.describe())
        loaded = LoadedInbetween(model, offload)
        loaded.patchers()  # sized now that the reverse tensors are in
        return io.NodeOutput(loaded, ui=ui.PreviewText(model.describe()))


class DualDirectionalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_DualDirectionalSampler",
            display_name="Dual-Directional Sampler",
            category=CATEGORY,
            # Not an output node: a graph whose outputs are broken must fail as a whole, not run
            # this part and report success. Its preview is shown whenever it runs.
            description=(
                "Generates the frames between keyframes: SVD runs forward from the first keyframe and the "
                "reverse-motion model backward from the last, sharing temporal attention maps, and the two "
                "are fused at every step. With a KEYFRAMES input each consecutive pair of keyframes is a "
                "segment; shared boundary frames appear once."
            ),
            inputs=[
                SVDInbetweenModel.Input("model", tooltip="From Reverse SVD Loader."),
                io.Image.Input(
                    "first_frame",
                    tooltip="The first keyframe; with 'keyframes' connected, the clip's frames (the "
                    "keyframe indices pick the keyframes).",
                ),
                io.Image.Input(
                    "last_frame", optional=True, tooltip="The last keyframe (needed without 'keyframes')."
                ),
                Keyframes.Input(
                    "keyframes",
                    optional=True,
                    tooltip="From Load Keyframes: segments between consecutive keyframe indices of "
                    "first_frame's batch; each segment gets (index gap + 1) frames unless num_frames is set.",
                ),
                io.Int.Input(
                    "num_frames",
                    default=0,
                    min=0,
                    max=128,
                    tooltip="Frames per segment including both keyframes; 0 = the model's (25 for xt), or "
                    "the keyframe gaps with 'keyframes'.",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=4096,
                    step=64,
                    tooltip="Resize the keyframes to this width (multiple of 64); 0 = keyframe width.",
                ),  # fmt: skip
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=4096,
                    step=64,
                    tooltip="Resize the keyframes to this height (multiple of 64); 0 = keyframe height.",
                ),  # fmt: skip
                io.Int.Input("steps", default=50, min=1, max=500, tooltip="Denoising steps (25 works too)."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed (segment k uses seed + k).",
                ),  # fmt: skip
                io.Float.Input(
                    "min_guidance",
                    default=1.0,
                    min=0.0,
                    max=20.0,
                    step=0.1,
                    tooltip="Guidance at a branch's own keyframe (ramps per frame to max_guidance).",
                ),  # fmt: skip
                io.Float.Input(
                    "max_guidance",
                    default=3.0,
                    min=0.0,
                    max=20.0,
                    step=0.1,
                    tooltip="Guidance at the far end of a branch; with 'average' fusion both branches use "
                    "the symmetric mean (2.0 for 1..3).",
                ),  # fmt: skip
                io.Combo.Input(
                    "fusion",
                    options=["average", "weighted"],
                    default="average",
                    tooltip="average: 0.5/0.5 per step; weighted: the forward branch's weight falls "
                    "linearly from 1 at the first keyframe to 0 at the last.",
                ),  # fmt: skip
                io.Float.Input(
                    "noise_injection_ratio",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Fraction of the first steps that re-inject noise and redo the step.",
                ),  # fmt: skip
                io.Int.Input(
                    "noise_injection_steps",
                    default=5,
                    min=0,
                    max=20,
                    tooltip="Re-injections per such step (each costs one more step); 0 = off.",
                ),  # fmt: skip
                io.Int.Input(
                    "motion_bucket_id",
                    default=127,
                    min=0,
                    max=1023,
                    tooltip="SVD motion conditioning: higher = more motion.",
                ),  # fmt: skip
                io.Int.Input("fps", default=7, min=1, max=60, tooltip="SVD frame-rate conditioning."),
                io.Float.Input(
                    "noise_aug_strength",
                    default=0.02,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Noise added to the keyframes before encoding (SVD conditioning).",
                ),  # fmt: skip
                io.Int.Input(
                    "decode_chunk_size",
                    default=8,
                    min=1,
                    max=128,
                    tooltip="Frames decoded at once by the VAE; smaller saves memory.",
                ),  # fmt: skip
                io.Combo.Input(
                    "mode",
                    options=["fused", "reference"],
                    default="fused",
                    tooltip="fused: both branches and guidance in one batched UNet call per step (faster, "
                    "no stored maps); reference: one call per branch with stored maps (same result).",
                ),  # fmt: skip
            ],
            outputs=[
                io.Image.Output("frames", tooltip="The generated frames, keyframe positions included."),
                io.Latent.Output(
                    "latent", tooltip="Their SVD latents (unscaled, as VAE Encode gives), one per frame."
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        num_frames: int | None = 0,
        width: int | None = 0,
        height: int | None = 0,
        fusion: str | None = "average",
        mode: str | None = "fused",
    ) -> bool | str:
        """Checked at queue time: the dropdowns (fusion, mode), the size (multiples of 64) and
        num_frames (ComfyUI checks the other inputs' number ranges)."""
        values = widget_values(locals())

        def size() -> None:
            for name, v in (("width", width), ("height", height)):
                if given(v) and int(v) % 64:
                    lo = max(64, int(v) // 64 * 64)
                    raise PipelineError(
                        f"{name}: {v} is not a multiple of 64 (SVD's latents); "
                        f"use for example {lo} or {lo + 64}"
                    )
            if given(num_frames) and int(num_frames) == 1:
                raise PipelineError(
                    "num_frames: a segment needs at least 2 frames (its keyframes); 0 = default"
                )

        return validation(cls, values, size)

    @classmethod
    def execute(
        cls,
        model: LoadedInbetween,
        first_frame: torch.Tensor,
        num_frames: int,
        width: int,
        height: int,
        steps: int,
        seed: int,
        min_guidance: float,
        max_guidance: float,
        fusion: str,
        noise_injection_ratio: float,
        noise_injection_steps: int,
        motion_bucket_id: int,
        fps: int,
        noise_aug_strength: float,
        decode_chunk_size: int,
        mode: str,
        last_frame: torch.Tensor | None = None,
        keyframes=None,
    ) -> io.NodeOutput:

        from ..pipelines.svd.conditioning import fit_keyframes
        from ..pipelines.svd.sampler import InbetweenSettings

        if not isinstance(model, LoadedInbetween):
            raise PipelineError("model: connect Reverse SVD Loader's output")
        keys, counts = _segments(first_frame, last_frame, keyframes, num_frames)
        keys = fit_keyframes(keys, width, height, "width/height")
        settings = InbetweenSettings(
            num_frames=num_frames, steps=steps, seed=seed, min_guidance=min_guidance,
            max_guidance=max_guidance, fusion=fusion, noise_injection_ratio=noise_injection_ratio,
            noise_injection_steps=noise_injection_steps, motion_bucket_id=motion_bucket_id, fps=fps,
            noise_aug_strength=noise_aug_strength, decode_chunk_size=decode_chunk_size, mode=mode,
        )  # fmt: skip
        m = model.model
        result = _sample(model, keys, settings, counts)
        latent = {"samples": result.latents / m.vae.config.scaling_factor}
        return io.NodeOutput(result.frames, latent, ui=clip_preview(cls, result.frames, fps=float(fps)))


def _sample(model: LoadedInbetween, keys, settings, counts):
    """The sampler with the SVD parts loaded by ComfyUI's model management: all three at once, or with
    offload one at a time (each is unloaded again when its step is done)."""
    import comfy.model_management as mm

    from ..pipelines.svd.sampler import inbetween_keyframes

    m = model.model
    patchers = model.patchers()
    # Activation memory beyond the weights (which ComfyUI counts): 30 % of the weights that work at
    # once plus 2 GiB, as before the parts were ComfyUI-managed.
    b = m.parameter_bytes()
    working = (
        max(b["unet"] + b["reverse"], b["vae"], b["image_encoder"]) if model.offload else sum(b.values())
    )
    activations = int(0.3 * working + 2 * 2**30)
    if not model.offload:
        device = load_on_compute_device(list(patchers.values()), activations)
        try:
            return inbetween_keyframes(m, keys, settings, counts, progress=comfy_progress(), device=device)
        finally:
            mm.soft_empty_cache()

    def place(part: str, working: bool) -> None:
        if working:
            load_on_compute_device([patchers[part]], activations)
        else:
            unload(patchers[part])

    for p in patchers.values():
        unload(p)  # idle parts wait on the offload device
    m.placer = place
    try:
        return inbetween_keyframes(
            m, keys, settings, counts, progress=comfy_progress(), device=mm.get_torch_device(),
            offload_device=mm.unet_offload_device(),
        )  # fmt: skip
    finally:
        m.placer = None
        mm.soft_empty_cache()


def _segments(
    first: torch.Tensor, last: torch.Tensor | None, keyframes, num_frames: int
) -> tuple[list[torch.Tensor], list[int] | None]:
    """Keyframe images and per-segment frame counts from the node inputs."""
    if keyframes is not None:
        idx = list(keyframes.indices)
        if len(idx) < 2:
            raise PipelineError(f"keyframes: inbetweening needs at least 2 keyframes, got {idx}")
        if idx[-1] >= first.shape[0]:
            raise PipelineError(
                f"keyframes: index {idx[-1]} is past first_frame's batch of {first.shape[0]} "
                "(connect Load Keyframes' frames to first_frame)"
            )
        counts = [num_frames or (b - a + 1) for a, b in zip(idx, idx[1:])]
        return [first[i] for i in idx], counts
    if last is None:
        raise PipelineError("last_frame: connect the last keyframe (or a KEYFRAMES input)")
    if first.shape[0] != 1 or last.shape[0] != 1:
        log.info("DualDirectionalSampler: using the first image of first_frame and the last of last_frame")
    if tuple(first.shape[1:3]) != tuple(last.shape[1:3]):
        raise PipelineError(
            f"last_frame: size {last.shape[2]}x{last.shape[1]} differs from first_frame's "
            f"{first.shape[2]}x{first.shape[1]}"
        )
    return [first[0], last[-1]], None


NODE_LIST: list[type[io.ComfyNode]] = [ReverseSVDLoader, DualDirectionalSampler]
