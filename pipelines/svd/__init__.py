"""Generative inbetweening with Stable Video Diffusion: forward + reverse-motion model, dual-directional
sampling (SPEC C).

- :mod:`.attention`: temporal self-attention processors (forward maps, rotated maps, fused batch).
- :mod:`.model`: :class:`InbetweenModel`, one SVD plus the reverse tensors.
- :mod:`.loading`: SVD from a diffusers folder or ``svd_xt.safetensors``; reverse weights (full UNet +
  base, or the compact delta file) and their extraction.
- :mod:`.sampler`: the dual-directional sampler.
- :mod:`.train`: fine-tuning the reverse tensors (Algorithm 1).

Heavy dependencies (diffusers, transformers) are imported by the submodules, not here.
"""

from __future__ import annotations

from .attention import (
    DualAttentionState,
    install_dual_attention,
    reverse_param_names,
    temporal_attention_layers,
)
from .model import InbetweenModel
from .sampler import (
    InbetweenResult,
    InbetweenSettings,
    decode_latents,
    inbetween,
    inbetween_keyframes,
    sample_latents,
)

__all__ = [
    "DualAttentionState",
    "InbetweenModel",
    "InbetweenResult",
    "InbetweenSettings",
    "decode_latents",
    "inbetween",
    "inbetween_keyframes",
    "install_dual_attention",
    "reverse_param_names",
    "sample_latents",
    "temporal_attention_layers",
]
