"""Which folders and files hold SVD and reverse-motion weights (light: no diffusers import).

The loaders (:mod:`.loading`) and the ComfyUI model lists use these same checks, so a model the node
lists is one the loader accepts.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PipelineError

# Weight files of a diffusers UNet folder, in the order they are looked for.
UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


def is_svd_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers SVD folder the loader can load (``unet/config.json``, ``vae/``)."""
    path = Path(path)
    return path.is_dir() and (path / "unet" / "config.json").is_file() and (path / "vae").is_dir()


def is_unet_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers UNet folder: ``config.json`` and one of the weight files."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / n).is_file() for n in UNET_WEIGHT_FILES)


def unet_weight_file(path: Path) -> Path:
    """The weights file of a diffusers UNet given as folder (``.../unet`` or its parent) or file."""
    if path.is_file():
        return path
    for folder in (path, path / "unet"):
        for name in UNET_WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
    raise PipelineError(
        f"{path}: no UNet weights found (expected unet/diffusion_pytorch_model.safetensors or a "
        ".safetensors file)"
    )


__all__ = ["UNET_WEIGHT_FILES", "is_svd_folder", "is_unet_folder", "unet_weight_file"]
