"""Loading SVD img2vid(-xt) and the reverse-motion weights; the compact delta file.

SVD: a diffusers folder (``model_index.json`` + ``unet/ vae/ image_encoder/ scheduler/
feature_extractor/``) or Stability's single file (``svd_xt.safetensors``, converted by
:mod:`.single_file` with the configs shipped in ``pipelines/configs/svd_xt``). Nothing is fetched.

Reverse-motion weights, in two forms:

(a) the released full UNet folder (``svd_reverse_motion_with_attnflip/unet/``) fine-tuned from SVD
    img2vid (14 frames), plus that img2vid UNet as ``base``: delta = fine-tuned - base for the 32
    changed tensors, added to the loaded (xt) UNet, as the reference does;
(b) a compact ``.safetensors`` delta file holding only those tensors (diffusers names, metadata
    ``format = kfp_svd_reverse_delta``), which :func:`extract_reverse_delta` writes from (a) once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..checks import parse_dtype
from ..errors import PipelineError
from ..weights import check_finite_module, read_weights, weight_keys
from .folders import is_svd_folder, unet_weight_file
from .model import CLIP_MEAN, CLIP_STD, InbetweenModel, check_reverse_tensors
from .single_file import CONFIG_DIR, load_single_file, read_config, unet_tensors_from_single_file

DELTA_FORMAT = "kfp_svd_reverse_delta"
REVERSE_NAME_RE = re.compile(r"temporal_transformer_blocks\.0\.attn1\.(to_v|to_out\.0)\.weight$")


# ----------------------------------------------------------------------------------------------
# SVD
# ----------------------------------------------------------------------------------------------
def _variant(folder: Path, stem: str) -> str | None:
    """'fp16' when a component folder only has the fp16 variant of its weights."""
    if any((folder / f"{stem}{ext}").is_file() for ext in (".safetensors", ".bin")):
        return None
    if any((folder / f"{stem}.fp16{ext}").is_file() for ext in (".safetensors", ".bin")):
        return "fp16"
    return None


def _json_or(path: Path, fallback: Path) -> dict:
    return json.loads((path if path.is_file() else fallback).read_text())


def load_svd(
    path: str | Path, dtype: str | torch.dtype = "fp16", config_dir: str | Path | None = None
) -> InbetweenModel:
    """SVD img2vid(-xt) from a diffusers folder or a single original-layout ``.safetensors`` file.

    ``config_dir`` replaces the shipped configs for the single-file form (tests use tiny configs).
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    dtype = parse_dtype(dtype)
    if not path.exists():
        raise PipelineError(f"svd: {path} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise PipelineError(f"svd: {path} is not a .safetensors file or a diffusers folder")
        unet, vae, encoder, sched, pre = load_single_file(
            path, dtype, Path(config_dir) if config_dir else None
        )
    else:
        if not is_svd_folder(path):
            raise PipelineError(
                f"svd: {path} is not a diffusers SVD folder (expected unet/config.json, vae/, image_encoder/)"
            )
        from diffusers.utils import is_accelerate_available

        # Without accelerate diffusers warns on every load unless told plainly.
        low = {} if is_accelerate_available() else {"low_cpu_mem_usage": False}
        try:
            unet = UNetSpatioTemporalConditionModel.from_pretrained(
                path, subfolder="unet", torch_dtype=dtype, local_files_only=True,
                variant=_variant(path / "unet", "diffusion_pytorch_model"), **low,
            )  # fmt: skip
            vae = AutoencoderKLTemporalDecoder.from_pretrained(
                path, subfolder="vae", torch_dtype=dtype, local_files_only=True,
                variant=_variant(path / "vae", "diffusion_pytorch_model"), **low,
            )  # fmt: skip
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                path, subfolder="image_encoder", dtype=dtype, local_files_only=True,
                variant=_variant(path / "image_encoder", "model"),
            )  # fmt: skip
        except (OSError, ValueError, RuntimeError) as e:
            raise PipelineError(f"svd: cannot load the diffusers folder {path}: {e}") from e
        sched = _json_or(
            path / "scheduler" / "scheduler_config.json", CONFIG_DIR / "scheduler" / "scheduler_config.json"
        )
        pre = _json_or(
            path / "feature_extractor" / "preprocessor_config.json",
            CONFIG_DIR / "feature_extractor" / "preprocessor_config.json",
        )
    for part, module in (("UNet", unet), ("VAE", vae), ("image encoder", encoder)):
        check_finite_module(module, f"svd ({part})", str(path))
    if unet.config.in_channels != 2 * vae.config.latent_channels:
        raise PipelineError(
            f"svd: {path}: the UNet takes {unet.config.in_channels} channels, not an img2vid model"
        )
    return InbetweenModel(
        unet=unet,
        vae=vae,
        image_encoder=encoder,
        scheduler_config=dict(sched),
        image_mean=tuple(pre.get("image_mean", CLIP_MEAN)),
        image_std=tuple(pre.get("image_std", CLIP_STD)),
        source=str(path),
    )


# ----------------------------------------------------------------------------------------------
# Reverse weights
# ----------------------------------------------------------------------------------------------
def _unet_config(path: Path) -> dict | None:
    for p in (path / "config.json", path / "unet" / "config.json", path.parent / "config.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _read_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file (float32, CPU); absent names are left out."""
    return {n: t.float() for n, t in read_weights(path, "reverse weights", names)[0].items()}


def _is_delta_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    return read_weights(path, "reverse weights", names=())[1].get("format") == DELTA_FORMAT


def _base_tensors(base: Path, names: list[str], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Named diffusers UNet tensors of the base: diffusers folder/file or an original-layout file."""
    if base.is_file() and base.suffix == ".safetensors":
        keys = weight_keys(base)
        if any(k.startswith("model.diffusion_model.") for k in keys):
            return unet_tensors_from_single_file(base, names, layers_per_block)
    return _read_tensors(unet_weight_file(base), names)


def reverse_names(keys: list[str]) -> list[str]:
    return sorted(k for k in keys if REVERSE_NAME_RE.search(k))


def read_reverse_delta(
    source: str | Path,
    base: str | Path | None = None,
    expected: dict[str, tuple[int, ...]] | None = None,
    layers_per_block: int | None = None,
) -> dict[str, torch.Tensor]:
    """Reverse-minus-forward deltas (float32) from a compact delta file or a fine-tuned UNet + base.

    expected: names and shapes the deltas must have (the target UNet's); checked with errors naming
    the file.
    """
    source = Path(source)
    if not source.exists():
        raise PipelineError(f"reverse weights: {source} does not exist")
    if _is_delta_file(source):
        if base is not None:
            raise PipelineError(f"reverse weights: {source} is a compact delta file; it needs no base UNet")
        delta = _read_tensors(source, weight_keys(source))
        if expected is not None:
            extra = sorted(set(delta) - set(expected))
            if extra:
                raise PipelineError(
                    f"{source}: {len(extra)} tensors are not reverse-motion tensors of this SVD UNet, "
                    f"e.g. {extra[0]}"
                )
            check_reverse_tensors(delta, expected, str(source))
        return delta
    # Form (a): a full fine-tuned UNet; the delta needs its base.
    weights = unet_weight_file(source)
    names = reverse_names(weight_keys(weights))
    if not names:
        raise PipelineError(
            f"{weights}: neither a compact reverse-motion delta file nor an SVD UNet "
            "(no temporal_transformer_blocks.0.attn1 weights)"
        )
    if base is None:
        raise PipelineError(
            f"reverse weights: {source} is a full fine-tuned UNet; give the UNet it was fine-tuned from "
            "as base (SVD img2vid, 14 frames: a diffusers folder or svd.safetensors), or extract a compact "
            "delta file once with `python -m keyframe_propagation extract-reverse-delta`"
        )
    base = Path(base)
    if not base.exists():
        raise PipelineError(f"base UNet: {base} does not exist")
    if layers_per_block is None:
        cfg = _unet_config(source if source.is_dir() else source.parent) or {}
        layers_per_block = int(cfg.get("layers_per_block", 2))
    probe = ["conv_in.weight"]
    fine = _read_tensors(weights, names + probe)
    base_t = _base_tensors(base, names + probe, layers_per_block)
    check_reverse_tensors(base_t, {n: tuple(fine[n].shape) for n in names}, f"base UNet {base}")
    if "conv_in.weight" in fine and "conv_in.weight" in base_t:
        a, b = fine["conv_in.weight"], base_t["conv_in.weight"]
        if a.shape != b.shape or not torch.allclose(a, b, atol=1e-3, rtol=1e-2):
            raise PipelineError(
                f"base UNet {base}: its conv_in.weight differs from {weights}'s, so it is not the UNet the "
                "reverse model was fine-tuned from (for the released weights that is SVD img2vid, 14 frames)"
            )
    delta = {n: fine[n] - base_t[n] for n in names}
    if expected is not None:
        extra = sorted(set(delta) - set(expected))
        if extra:
            raise PipelineError(f"{weights}: its UNet has layers this SVD UNet lacks, e.g. {extra[0]}")
        check_reverse_tensors(delta, expected, str(weights))
    return delta


def save_reverse_delta(
    delta: dict[str, torch.Tensor], out: str | Path, dtype: str | torch.dtype = "fp16", **meta: str
) -> Path:
    """Write a compact delta file (only the reverse tensors) with ``format`` metadata."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise PipelineError(f"out: {out} must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    dt = parse_dtype(dtype)
    tensors = {k: v.detach().to("cpu", dt).contiguous() for k, v in sorted(delta.items())}
    metadata = {"format": DELTA_FORMAT, "version": "1", "dtype": str(dt).removeprefix("torch.")}
    metadata.update({k: str(v) for k, v in meta.items()})
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


def extract_reverse_delta(
    finetuned: str | Path, base: str | Path, out: str | Path, dtype: str | torch.dtype = "fp16"
) -> tuple[Path, int]:
    """Form (a) -> form (b): write the compact delta file. Returns (path, number of tensors)."""
    delta = read_reverse_delta(finetuned, base)
    path = save_reverse_delta(delta, out, dtype, source=str(finetuned), base=str(base))
    return path, len(delta)


def load_reverse(model: InbetweenModel, source: str | Path, base: str | Path | None = None) -> InbetweenModel:
    """Read the reverse weights into ``model`` (reverse tensors = its forward tensors + delta)."""
    delta = read_reverse_delta(
        source,
        base,
        expected=model.expected_shapes(),
        layers_per_block=int(model.unet.config.layers_per_block),
    )
    model.set_reverse_delta(delta, source=str(source) + (f" (base {base})" if base else ""))
    return model


def load_inbetween_model(
    svd: str | Path,
    reverse: str | Path | None = None,
    base: str | Path | None = None,
    dtype: str | torch.dtype = "fp16",
    config_dir: str | Path | None = None,
) -> InbetweenModel:
    """SVD plus reverse weights (None: reverse = forward weights, i.e. two-run averaging)."""
    model = load_svd(svd, dtype, config_dir)
    if reverse is not None:
        load_reverse(model, reverse, base)
    return model


__all__ = [
    "DELTA_FORMAT",
    "extract_reverse_delta",
    "load_inbetween_model",
    "load_reverse",
    "load_svd",
    "read_config",
    "read_reverse_delta",
    "save_reverse_delta",
]
