"""Conditioning of SVD on a keyframe, as diffusers' ``StableVideoDiffusionPipeline`` computes it.

The CLIP image embedding (the keyframe resized to 224 with antialiasing, CLIP-normalised), the
noise-augmented VAE latent (``latent_dist.mode()``; the fp16 VAE encodes in float32), and the checks
and resizing that bring user keyframes to a size SVD takes (multiples of 64). Used by the sampler
and by reverse-motion training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checks import check_shape
from ..errors import PipelineError, wh
from ..ops import fit_size
from .compat import resize_with_antialiasing
from .model import InbetweenModel


def image_to_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    """(H, W, 3) or (1, H, W, 3) in [0, 1] -> (1, 3, H, W) float32."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise PipelineError(f"{what}: expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    check_shape(image, "H,W,3|4", what)
    return image[..., :3].permute(2, 0, 1)[None].float().clamp(0, 1)


def check_size(height: int, width: int, what: str = "keyframes") -> None:
    """SVD takes sizes that are multiples of 64 (its latents are downsampled 3 more times in the UNet)."""
    if height % 64 or width % 64 or height < 64 or width < 64:
        raise PipelineError(
            f"{what}: size {width}x{height} is not a multiple of 64 (SVD latents are downsampled 3 more "
            "times in the UNet); resize the keyframes, e.g. to 1024x576"
        )


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, C) -> (height, width, C), bicubic with antialiasing, clamped to [0, 1]."""
    if tuple(image.shape[:2]) == (height, width):
        return image
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def fit_keyframes(
    keyframes: Sequence[torch.Tensor], width: int = 0, height: int = 0, option: str = "width/height"
) -> list[torch.Tensor]:
    """Keyframe images ``(H, W, C)`` of one size, resized to ``width`` x ``height`` (multiples of 64;
    0 for one side keeps the aspect ratio, both 0 keeps the keyframes' size). ``option`` is how the
    user sets the size (``width/height`` on the node, ``--width/--height`` on the command line).
    Raises PipelineError when the keyframes differ in size or the size is not one SVD takes."""
    sizes = [tuple(int(s) for s in k.shape[:2]) for k in keyframes]
    odd = [i for i, s in enumerate(sizes) if s != sizes[0]]
    if odd:
        i = odd[0]
        raise PipelineError(
            f"keyframes: keyframe {i + 1} is {wh(sizes[i])} but keyframe 1 is {wh(sizes[0])}; "
            "give keyframes of one size"
        )
    H, W = sizes[0]
    th, tw = fit_size(H, W, width, height, 64)
    check_size(th, tw, option if (width or height) else f"keyframes (set {option})")
    return [resize_image(k[..., :3].float(), th, tw) for k in keyframes]


@torch.no_grad()
def clip_embedding(model: InbetweenModel, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 1, D), as the diffusers pipeline encodes a PIL image."""
    x = image.to(device) * 2.0 - 1.0
    x = (resize_with_antialiasing(x, (224, 224)) + 1.0) / 2.0
    mean = torch.tensor(model.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.image_std, device=device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(model.image_encoder.dtype)
    return model.image_encoder(x).image_embeds.unsqueeze(1)


@torch.no_grad()
def vae_latent(model: InbetweenModel, image: torch.Tensor, noise: torch.Tensor, aug: float) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 4, h, w) noise-augmented conditioning latent (unscaled mode)."""
    vae = model.vae
    x = image.to(noise.device) * 2.0 - 1.0 + aug * noise
    # The fp16 SVD VAE overflows when encoding: run the encoder in float32 as the pipeline does.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        return vae.encode(x.to(vae.dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(torch.float16)


__all__ = ["check_size", "clip_embedding", "fit_keyframes", "image_to_tensor", "resize_image", "vae_latent"]
