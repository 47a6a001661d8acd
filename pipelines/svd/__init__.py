"""Generative inbetweening with Stable Video Diffusion: forward + reverse-motion model, dual-directional
sampling (SPEC C).

- :mod:`.attention`: temporal self-attention processors (forward maps, rotated maps, fused batch).
- :mod:`.model`: :class:`~.model.InbetweenModel`, one SVD plus the reverse tensors.
- :mod:`.conditioning`: keyframe checks and resizing, CLIP embedding, VAE latent.
- :mod:`.compat`: the two uses of diffusers' private API, with the supported diffusers range.
- :mod:`.sampler`: the dual-directional sampler.
- :mod:`.loading`: SVD from a diffusers folder or ``svd_xt.safetensors``; reverse weights (full UNet +
  base, or the compact delta file) and their extraction. :mod:`.single_file` converts the original
  layout.
- :mod:`.train`: fine-tuning the reverse tensors (Algorithm 1).

Nothing is imported here: the submodules import diffusers and transformers, which are heavy, only
when they are used.
"""
