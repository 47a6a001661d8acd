"""Randomly initialised SVD components of any size, saved as a diffusers folder (tests, benchmark).

No weights are downloaded: the configs are SVD's with fewer channels, layers and frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..svd.single_file import CONFIG_DIR

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
    num_frames=4,
    sample_size=8,
)
# Four levels (scale factor 8 as SVD's), layers_per_block 2 so the original layout maps 1:1.
TINY_VAE = dict(
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=224,
    patch_size=32,
    projection_dim=32,
)
# A mid-size UNet for CPU benchmarks: SVD's 4 levels and 16 temporal attention layers, fewer channels.
MID_UNET = dict(
    block_out_channels=(64, 128, 256, 256),
    layers_per_block=2,
    cross_attention_dim=64,
    num_attention_heads=(2, 4, 8, 8),
    addition_time_embed_dim=16,
    projection_class_embeddings_input_dim=48,
    num_frames=14,
    sample_size=16,
)


def build_svd_folder(
    folder: str | Path,
    seed: int = 0,
    unet: dict | None = None,
    vae: dict | None = None,
    clip: dict | None = None,
    perturb: float = 0.0,
) -> Path:
    """Write a random SVD diffusers folder (model_index.json, unet/, vae/, image_encoder/, ...).

    perturb: scale of extra random noise added to every UNet parameter, so the UNet is not close to its
    (mostly zero-initialised) default and the outputs depend on all weights.
    """
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    u = UNetSpatioTemporalConditionModel(**(TINY_UNET if unet is None else unet))
    if perturb:
        with torch.no_grad():
            for p in u.parameters():
                p.add_(torch.randn_like(p) * perturb)
    v = AutoencoderKLTemporalDecoder(**(TINY_VAE if vae is None else vae))
    c = CLIPVisionModelWithProjection(CLIPVisionConfig(**(TINY_CLIP if clip is None else clip)))
    u.save_pretrained(folder / "unet")
    v.save_pretrained(folder / "vae")
    c.save_pretrained(folder / "image_encoder")
    sched = json.loads((CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    EulerDiscreteScheduler.from_config(sched).save_pretrained(folder / "scheduler")
    (folder / "feature_extractor").mkdir(parents=True, exist_ok=True)
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(
        (CONFIG_DIR / "feature_extractor" / "preprocessor_config.json").read_text()
    )
    (folder / "model_index.json").write_text((CONFIG_DIR / "model_index.json").read_text())
    return folder


def random_reverse_delta(model, scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random deltas for the reverse tensors of ``model`` (an InbetweenModel)."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in model.expected_shapes().items()}


def build_reverse_unet_folder(
    base: str | Path, folder: str | Path, scale: float = 0.1, seed: int = 0
) -> Path:
    """A stand-in for the released reverse-motion UNet: the UNet of the SVD folder ``base`` with random
    changes (``scale`` x N(0, 1)) to the 32 temporal V/O weights, saved as ``folder/unet``."""
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(base, subfolder="unet")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "temporal_transformer_blocks.0.attn1" in name and name.endswith(
                ("to_v.weight", "to_out.0.weight")
            ):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    unet.save_pretrained(Path(folder) / "unet")
    return Path(folder)
