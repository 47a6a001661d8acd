"""Reading, checking and writing two-stream generator weights.

Formats read:

* the reference's PyTorch Lightning checkpoints (``.ckpt``, also ``.pt``/``.pth``): ``state_dict`` with
  ``generator.`` keys; ``discriminator.``, ``flow.raft.``, ``loss_resnet_pl.`` and any other prefixes
  are ignored. Always read with ``torch.load(weights_only=True)``; classes a checkpoint names besides
  tensors and containers (Lightning callbacks, OmegaConf configs in its hyper-parameters) are replaced
  by inert stand-ins that run no code;
* ``.safetensors`` with the same keys, with or without the ``generator.`` prefix.

The generator's shape (which of ``ours`` / ``ours_big`` / ``ours_no_ffc``, or any other width and
depth) is read from the keys and shapes; the attention head count, which no shape shows, comes from
the file's metadata when this package wrote it, else the reference's 8.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import PipelineError
from ..weights import read_weights, state_dict_mismatch
from .model import CONFIGS, TwoStreamConfig, TwoStreamGenerator

__all__ = [
    "CONFIG_METADATA_KEY",
    "GENERATOR_PREFIX",
    "check_generator_state_dict",
    "config_name",
    "convert_two_stream",
    "detect_two_stream_config",
    "generator_state_dict",
    "load_two_stream",
    "read_generator_file",
    "save_two_stream",
]

GENERATOR_PREFIX = "generator."
# Safetensors metadata entry / checkpoint top-level entry holding the config as JSON.
CONFIG_METADATA_KEY = "two_stream_config"
_ANCHOR = "model.1.conv.weight"  # the first conv: present in every two-stream generator
_SHOW = 3  # keys named in error messages


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_generator_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """All tensors of a weight file and the config metadata this package writes (empty when none).

    The config is the JSON in a safetensors file's ``two_stream_config`` metadata entry, or a torch
    file's top-level ``two_stream_config`` dict. Raises PipelineError naming the file when it is
    missing, unreadable (corrupt, truncated) or holds no tensors.
    """
    tensors, meta = read_weights(path, "model")
    raw = meta.get(CONFIG_METADATA_KEY)
    if isinstance(raw, dict):
        return tensors, dict(raw)
    if isinstance(raw, str):
        try:
            return tensors, dict(json.loads(raw))
        except (ValueError, TypeError) as e:
            raise PipelineError(
                f"model: cannot read '{Path(path).name}' ({path}): bad {CONFIG_METADATA_KEY}: {e}"
            ) from e
    return tensors, {}


def generator_state_dict(sd: dict[str, torch.Tensor], name: str = "file") -> dict[str, torch.Tensor]:
    """The generator's entries: those under ``generator.`` (prefix removed) when any key has it, else
    all entries as they are (a generator-only file)."""
    if any(k.startswith(GENERATOR_PREFIX) for k in sd):
        return {k[len(GENERATOR_PREFIX) :]: v for k, v in sd.items() if k.startswith(GENERATOR_PREFIX)}
    if _ANCHOR not in sd:
        first = ", ".join(list(sd)[:5])
        raise PipelineError(
            f"model: '{name}' is not a two-stream generator: neither 'generator.' keys nor "
            f"'{_ANCHOR}' (first keys: {first})"
        )
    return dict(sd)


# --------------------------------------------------------------------------------------------------
# Config detection
# --------------------------------------------------------------------------------------------------


def _indices(sd: dict[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def detect_two_stream_config(
    sd: dict[str, torch.Tensor], meta: dict[str, object] | None = None, name: str = "file"
) -> TwoStreamConfig:
    """The generator's config from a prefix-free state dict (its keys and shapes).

    Read from the shapes: input/output channels, ngf, downsamplings, LIF width, token count and
    width, GI blocks, LIF block type (FFC split ratio or conv groups), read/write heads, cross-frame
    blocks. ``meta`` (from :func:`read_generator_file`) supplies the attention head count, which no shape
    shows; default 8 (the reference's).
    """
    try:
        w0 = sd[_ANCHOR]
        ngf, input_nc = int(w0.shape[0]), int(w0.shape[1])
        latent_idx = _indices(sd, r"model\.(\d+)\.latents")
        if len(latent_idx) != 1:
            raise KeyError("model.N.latents (the latent init) not found")
        li = latent_idx[0]
        downs = _indices(sd, r"model\.(\d+)\.conv\.weight")
        n_down = len([i for i in downs if 2 <= i < li])
        if n_down != li - 2:
            raise KeyError(f"encoder layers model.2..{li - 1} incomplete (found {downs})")
        latents = sd[f"model.{li}.latents"]
        m, d = int(latents.shape[0]), int(latents.shape[1])
        g = math.isqrt(m)
        if g * g != m:
            raise KeyError(f"model.{li}.latents has {m} tokens, not a square grid")
        c = int(sd[f"model.{li}.project.weight"].shape[0])
        n_pos = int(sd[f"model.{li}.project.weight"].shape[1]) - c
        if (n_pos - 2) % 4:
            raise KeyError(f"model.{li}.project.weight: {n_pos} position channels is not 2 + 4 * bands")
        blocks = _indices(sd, r"model\.(\d+)\.read\.ln1\.weight")
        if not blocks:
            raise KeyError(f"no GI blocks (model.{li + 1}.read.ln1.weight ...)")
        gaps = [f"model.{i}.*" for i in range(li + 1, blocks[-1] + 1) if i not in blocks]
        if gaps:
            raise KeyError(f"GI blocks {', '.join(gaps)} missing (found blocks {blocks})")
        b0 = blocks[0]
        rw_heads = int(sd[f"model.{b0}.read.to_logits.weight"].shape[0])
        if f"model.{b0}.block1.conv1.ffc.convl2l.weight" in sd:
            block_type, groups = "ffc", 4
            c_l = int(sd[f"model.{b0}.block1.conv1.ffc.convl2l.weight"].shape[0])
            ratio = (c - c_l) / c
        elif f"model.{b0}.block1.conv.weight" in sd:
            block_type, ratio = "conv", 0.75
            groups = c // int(sd[f"model.{b0}.block1.conv.weight"].shape[1])
        else:
            raise KeyError(f"model.{b0}.block1 is neither an FFC nor a conv block")
        out_idx = li + len(blocks) + 1 + 3 * n_down + 2  # latent init, blocks, drop, decoder, pad
        out_w = sd[f"model.{out_idx}.weight"]
        n_cross = len(_indices(sd, r"deformable_writes\.(\d+)\.q\.weight"))
        if n_cross == 0:
            raise KeyError("deformable_writes.0.q.weight")
    except KeyError as e:
        raise PipelineError(f"model: '{name}' does not have the two-stream generator's layout: {e}") from e
    cfg = TwoStreamConfig(
        input_nc=input_nc,
        output_nc=int(out_w.shape[0]),
        ngf=ngf,
        n_downsampling=n_down,
        n_blocks=len(blocks),
        block_type=block_type,
        n_cross=n_cross,
        num_latents_sqrt=g,
        latent_dim=None if d == c else d,
        read_write_heads=rw_heads,
        num_groups=groups,
        ratio_g=ratio,
        max_features=c if c < ngf * 2**n_down else TwoStreamConfig.max_features,
        pos_bands=(n_pos - 2) // 4,
    )
    if meta:
        heads = meta.get("num_heads")
        if isinstance(heads, int) and heads > 0:
            cfg = replace(cfg, num_heads=heads)
        res = meta.get("pos_max_resolution")
        if isinstance(res, int) and res > 0:
            cfg = replace(cfg, pos_max_resolution=res)
    try:
        cfg.check()
    except PipelineError as e:
        raise PipelineError(f"model: '{name}': {e}") from e
    return cfg


def config_name(cfg: TwoStreamConfig) -> str:
    """The name of a known config (``ours``, ``ours_big``, ``ours_no_ffc``, ``tiny``) or "custom"."""
    for n, known in CONFIGS.items():
        if known == cfg:
            return n
    return "custom"


def check_generator_state_dict(sd: dict[str, torch.Tensor], cfg: TwoStreamConfig, name: str = "file") -> None:
    """Raise PipelineError naming the first missing, unexpected and mis-shaped entries of ``sd``
    compared with a generator of ``cfg`` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        own = TwoStreamGenerator(cfg).state_dict()
    parts = state_dict_mismatch(own, sd, show=_SHOW)
    if parts:
        raise PipelineError(
            f"model: '{name}' is not a complete two-stream generator ({config_name(cfg)} layout): "
            + "; ".join(parts)
        )


# --------------------------------------------------------------------------------------------------
# Loading and writing
# --------------------------------------------------------------------------------------------------


def load_two_stream(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: TwoStreamConfig | str | None = None,
) -> TwoStreamGenerator:
    """A two-stream generator from a Lightning ``.ckpt`` or a ``.safetensors`` file.

    The config is detected from the weights unless given. Returned in eval mode with frozen weights,
    on ``device`` in ``dtype`` (BatchNorm counters stay int64). Raises PipelineError naming the file
    and the first missing/unexpected/mis-shaped keys when it is not a complete generator.
    """
    name = Path(path).name
    # Everything outside inference mode (ComfyUI runs nodes under it): tensors read inside it could
    # not become parameters, nor join the autograd graphs of training or refinement.
    with torch.inference_mode(False):
        raw, meta = read_generator_file(path)
        sd = generator_state_dict(raw, name)
        if config is None:
            cfg = detect_two_stream_config(sd, meta, name)
        elif isinstance(config, str):
            if config not in CONFIGS:
                raise PipelineError(f"config: unknown two-stream config '{config}'; one of {list(CONFIGS)}")
            cfg = CONFIGS[config]
        else:
            cfg = config
        check_generator_state_dict(sd, cfg, name)
        # Built on the meta device and given the file's tensors: no random init of 100M+ weights.
        with torch.device("meta"):
            model = TwoStreamGenerator(cfg)
        model.load_state_dict(sd, strict=True, assign=True)
        model.eval().requires_grad_(False)
        model.to(device=device, dtype=dtype)
    return model


def _metadata(cfg: TwoStreamConfig) -> dict[str, str]:
    return {CONFIG_METADATA_KEY: json.dumps(cfg.to_dict()), "format": "two_stream_generator"}


def save_two_stream(model: TwoStreamGenerator, path: str | os.PathLike, prefix: str = "") -> Path:
    """Write the generator's weights as safetensors (keys with ``prefix``, default none), with its
    config in the metadata. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {prefix + k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=_metadata(model.config))
    return path


def convert_two_stream(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, TwoStreamConfig]:
    """Extract the generator of a checkpoint into a generator-only ``.safetensors`` (no prefix).

    Fails, naming keys, on anything that is not one complete generator (missing, unexpected or
    mis-shaped entries). Returns the written path and the detected config.
    """
    dst = Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise PipelineError(f"output: '{dst}' must end in .safetensors")
    name = Path(src).name
    raw, meta = read_generator_file(src)
    sd = generator_state_dict(raw, name)
    cfg = detect_two_stream_config(sd, meta, name)
    check_generator_state_dict(sd, cfg, name)
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=_metadata(cfg))
    os.replace(tmp, dst)
    return dst, cfg
