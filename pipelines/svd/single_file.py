"""Stability's single-file SVD checkpoints (``svd_xt.safetensors``, ``svd.safetensors``) in diffusers form.

diffusers' ``from_single_file`` does not cover ``UNetSpatioTemporalConditionModel`` or
``AutoencoderKLTemporalDecoder``, so the original (``sgm``) key layout is renamed here to the diffusers
one and the components are built from the small config files shipped in ``pipelines/configs/svd_xt``.

Original layout (prefixes): ``model.diffusion_model.`` (VideoUNet), ``first_stage_model.`` (VAE with
the temporal decoder, no quant convs), ``conditioner.embedders.0.open_clip.model.visual.`` (OpenCLIP
ViT-H/14 image tower). Tensors are read one at a time, so peak memory stays near one copy in ``dtype``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import PipelineError
from ..weights import state_dict_mismatch, weight_keys

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "svd_xt"
log = logging.getLogger("keyframe_propagation")

_RES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VAE_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


class UnknownTensorError(PipelineError):
    """A tensor name the original-layout converter does not know."""


def _sub(table: dict[str, str], rest: str, where: str) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise UnknownTensorError(f"unexpected tensor {where}{rest}")


# ----------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------
def _unet_resnet(prefix: str, rest: str, where: str) -> str:
    if rest == "time_mixer.mix_factor":
        return f"{prefix}.time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        return f"{prefix}.temporal_res_block.{_sub(_RES, rest[len('time_stack.') :], where + 'time_stack.')}"
    return f"{prefix}.spatial_res_block.{_sub(_RES, rest, where)}"


def _unet_attention(prefix: str, rest: str) -> str:
    m = re.match(r"time_stack\.(\d+)\.(.*)", rest)
    if m:
        return f"{prefix}.temporal_transformer_blocks.{m[1]}.{m[2]}"
    m = re.match(r"time_pos_embed\.([02])\.(.*)", rest)
    if m:
        return f"{prefix}.time_pos_embed.linear_{1 if m[1] == '0' else 2}.{m[2]}"
    return f"{prefix}.{rest}"


def unet_key_map(keys: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """Original VideoUNet names (without ``model.diffusion_model.``) -> diffusers names."""
    out: dict[str, str] = {}
    fixed = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1",
        "label_emb.0.2": "add_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    n = layers_per_block + 1
    for key in keys:
        head, _, leaf = key.rpartition(".")
        if head in fixed:
            out[key] = f"{fixed[head]}.{leaf}"
            continue
        if m := re.match(r"middle_block\.(\d+)\.(.*)", key):
            k, rest = int(m[1]), m[2]
            if k == 1:
                out[key] = _unet_attention("mid_block.attentions.0", rest)
            elif k in (0, 2):
                out[key] = _unet_resnet(f"mid_block.resnets.{k // 2}", rest, f"middle_block.{k}.")
            else:
                raise UnknownTensorError(f"unexpected tensor {key}")
            continue
        m = re.match(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)", key)
        if m is None:
            raise UnknownTensorError(f"unexpected tensor {key}")
        kind, i, k, rest = m[1], int(m[2]), int(m[3]), m[4]
        where = f"{kind}.{i}.{k}."
        if kind == "input_blocks":
            level, j = divmod(i - 1, n)
            if j == layers_per_block:
                if k != 0 or not rest.startswith("op."):
                    raise UnknownTensorError(f"unexpected tensor {key}")
                out[key] = f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
            elif k == 0:
                out[key] = _unet_resnet(f"down_blocks.{level}.resnets.{j}", rest, where)
            else:
                out[key] = _unet_attention(f"down_blocks.{level}.attentions.{j}", rest)
        else:
            level, j = divmod(i, n)
            if k == 0:
                out[key] = _unet_resnet(f"up_blocks.{level}.resnets.{j}", rest, where)
            elif rest in ("conv.weight", "conv.bias"):
                out[key] = f"up_blocks.{level}.upsamplers.0.{rest}"
            else:
                out[key] = _unet_attention(f"up_blocks.{level}.attentions.{j}", rest)
    return out


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------
def _vae_video_resnet(prefix: str, rest: str, where: str) -> str:
    if rest == "mix_factor":
        return f"{prefix}.time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        return f"{prefix}.temporal_res_block.{_sub(_RES, rest[len('time_stack.') :], where + 'time_stack.')}"
    return f"{prefix}.spatial_res_block.{_sub(_VAE_RES, rest, where)}"


def vae_key_map(keys: Iterable[str], num_levels: int) -> dict[str, str]:
    """Original VAE names (without ``first_stage_model.``) -> diffusers AutoencoderKLTemporalDecoder names."""
    out: dict[str, str] = {}
    for key in keys:
        part, _, rest = key.partition(".")
        if part not in ("encoder", "decoder"):
            if key.startswith("quant_conv."):
                out[key] = key  # absent in SVD's VAE (then identity), kept if a checkpoint has one
                continue
            raise UnknownTensorError(f"unexpected tensor {key}")
        p = part
        if m := re.match(r"(conv_in|conv_out|norm_out)\.(weight|bias)$", rest):
            name = "conv_norm_out" if m[1] == "norm_out" else m[1]
            out[key] = f"{p}.{name}.{m[2]}"
        elif m := re.match(r"conv_out\.time_mix_conv\.(weight|bias)$", rest):
            out[key] = f"{p}.time_conv_out.{m[1]}"
        elif m := re.match(r"mid\.attn_1\.(.*)", rest):
            out[key] = f"{p}.mid_block.attentions.0.{_sub(_VAE_ATTN, m[1], key[: -len(m[1])])}"
        elif m := re.match(r"mid\.block_([12])\.(.*)", rest):
            prefix = f"{p}.mid_block.resnets.{int(m[1]) - 1}"
            if p == "encoder":
                out[key] = f"{prefix}.{_sub(_VAE_RES, m[2], key[: -len(m[2])])}"
            else:
                out[key] = _vae_video_resnet(prefix, m[2], key[: -len(m[2])])
        elif m := re.match(r"(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)", rest):
            level = int(m[2]) if p == "encoder" else num_levels - 1 - int(m[2])
            blocks = "down_blocks" if p == "encoder" else "up_blocks"
            if m[3] == "block":
                j, _, sub = m[4].partition(".")
                prefix = f"{p}.{blocks}.{level}.resnets.{j}"
                where = key[: -len(sub)]
                if p == "encoder":
                    out[key] = f"{prefix}.{_sub(_VAE_RES, sub, where)}"
                else:
                    out[key] = _vae_video_resnet(prefix, sub, where)
            else:
                sampler = "downsamplers" if m[3] == "downsample" else "upsamplers"
                out[key] = f"{p}.{blocks}.{level}.{sampler}.0.{m[4]}"
        else:
            raise UnknownTensorError(f"unexpected tensor {key}")
    return out


# ----------------------------------------------------------------------------------------------
# CLIP image tower (OpenCLIP -> transformers CLIPVisionModelWithProjection)
# ----------------------------------------------------------------------------------------------
_CLIP_FIXED = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def convert_clip_tensor(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """One OpenCLIP visual tensor (name without prefix) -> transformers tensors."""
    if key in _CLIP_FIXED:
        return {_CLIP_FIXED[key]: t}
    if key == "proj":  # (width, embed) matrix used as x @ proj
        return {"visual_projection.weight": t.t().contiguous()}
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)\.(weight|bias)$", key)
    if m is None:
        m2 = re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)
        if m2 is None:
            raise UnknownTensorError(f"unexpected tensor {CLIP_PREFIX}{key}")
        q, k, v = t.chunk(3, dim=0)
        base = f"vision_model.encoder.layers.{m2[1]}.self_attn"
        return {f"{base}.q_proj.{m2[2]}": q, f"{base}.k_proj.{m2[2]}": k, f"{base}.v_proj.{m2[2]}": v}
    layer, mod, leaf = m[1], m[2], m[3]
    if mod == "attn" and leaf in ("weight", "bias"):
        raise UnknownTensorError(f"unexpected tensor {CLIP_PREFIX}{key}")
    if mod not in _CLIP_BLOCK:
        raise UnknownTensorError(f"unexpected tensor {CLIP_PREFIX}{key}")
    return {f"vision_model.encoder.layers.{layer}.{_CLIP_BLOCK[mod]}.{leaf}": t}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def read_config(config_dir: Path, name: str) -> dict:
    path = config_dir / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot read the config ({e})") from e


def _map_each(fn, keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """Apply a one-key name map to each key; keys it does not know are returned separately."""
    out, unknown = {}, []
    for k in keys:
        try:
            out.update(fn(k))
        except UnknownTensorError:
            unknown.append(k)
    return out, unknown


def _build(cls, config: dict, state: dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    """Instantiate ``cls`` on the meta device and assign ``state`` (no random init, no second copy)."""
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    parts = state_dict_mismatch(model.state_dict(), state)
    if parts:
        raise PipelineError(f"{path}: the {what} tensors do not match the {what} config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # non-persistent buffers are not in checkpoints
            if not name.endswith("position_ids"):
                raise PipelineError(f"{path}: {what} buffer {name} was not initialised")
            mod_name, _, leaf = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            mod.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    return model.eval()


def load_single_file(
    path: Path, dtype: torch.dtype, config_dir: Path | None = None
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, dict, dict]:
    """Build (unet, vae, image_encoder, scheduler_config, preprocessor_config) from one checkpoint."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from safetensors import safe_open
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    unet_cfg = read_config(config_dir, "unet/config.json")
    vae_cfg = read_config(config_dir, "vae/config.json")
    clip_cfg = read_config(config_dir, "image_encoder/config.json")
    sched_cfg = read_config(config_dir, "scheduler/scheduler_config.json")
    pre_cfg = read_config(config_dir, "feature_extractor/preprocessor_config.json")

    keys = weight_keys(path, "svd")
    unet_keys = [k[len(UNET_PREFIX) :] for k in keys if k.startswith(UNET_PREFIX)]
    vae_keys = [k[len(VAE_PREFIX) :] for k in keys if k.startswith(VAE_PREFIX)]
    clip_keys = [k[len(CLIP_PREFIX) :] for k in keys if k.startswith(CLIP_PREFIX)]
    for what, got, prefix in (("UNet", unet_keys, UNET_PREFIX), ("VAE", vae_keys, VAE_PREFIX)):
        if not got:
            raise PipelineError(
                f"{path}: no {what} tensors ({prefix}*); not a Stability SVD checkpoint "
                "(use a diffusers folder or svd_xt.safetensors)"
            )
    if not clip_keys:
        raise PipelineError(
            f"{path}: no CLIP image encoder tensors ({CLIP_PREFIX}*); the SVD checkpoint must include its "
            "image encoder"
        )
    lpb, levels = int(unet_cfg.get("layers_per_block", 2)), len(vae_cfg.get("block_out_channels", [0] * 4))
    umap, unknown = _map_each(lambda k: unet_key_map([k], lpb), unet_keys)
    vmap, unknown_v = _map_each(lambda k: vae_key_map([k], levels), vae_keys)
    unknown = [UNET_PREFIX + k for k in unknown] + [VAE_PREFIX + k for k in unknown_v]
    unet_sd: dict[str, torch.Tensor] = {}
    vae_sd: dict[str, torch.Tensor] = {}
    clip_sd: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in umap:
            unet_sd[umap[k]] = f.get_tensor(UNET_PREFIX + k).to(dtype)
        for k in vmap:
            t = f.get_tensor(VAE_PREFIX + k).to(dtype)
            new = vmap[k]
            if ".attentions.0.to_" in new and new.endswith("weight") and t.ndim == 4:
                t = t[:, :, 0, 0]  # 1x1 conv -> linear
            vae_sd[new] = t
        for k in clip_keys:
            try:
                converted = convert_clip_tensor(k, f.get_tensor(CLIP_PREFIX + k))
            except UnknownTensorError:
                unknown.append(CLIP_PREFIX + k)
                continue
            clip_sd.update({n: t.to(dtype) for n, t in converted.items()})
    if unknown:
        # Tolerated when every tensor the components need is found (checked by _build); named otherwise.
        log.info("%s: ignored %d tensors of unknown layout, e.g. %s", path, len(unknown), unknown[0])
    lat2 = 2 * int(vae_cfg.get("latent_channels", 4))
    if "quant_conv.weight" not in vae_sd:  # SVD's VAE has none: identity
        vae_sd["quant_conv.weight"] = torch.eye(lat2, dtype=dtype)[:, :, None, None]
        vae_sd["quant_conv.bias"] = torch.zeros(lat2, dtype=dtype)
    clip_sd.pop("vision_model.embeddings.position_ids", None)
    unet = _build(UNetSpatioTemporalConditionModel, unet_cfg, unet_sd, path, "UNet")
    vae = _build(AutoencoderKLTemporalDecoder, vae_cfg, vae_sd, path, "VAE")
    clip_config = CLIPVisionConfig(**{k: v for k, v in clip_cfg.items() if not k.startswith("_")})
    encoder = _build(CLIPVisionModelWithProjection, clip_config, clip_sd, path, "image encoder")
    return unet, vae, encoder, sched_cfg, pre_cfg


def unet_tensors_from_single_file(
    path: Path, names: list[str], layers_per_block: int
) -> dict[str, torch.Tensor]:
    """Only the named diffusers UNet tensors of an original-layout checkpoint (float32)."""
    from safetensors import safe_open

    keys = [k[len(UNET_PREFIX) :] for k in weight_keys(path, "svd") if k.startswith(UNET_PREFIX)]
    if not keys:
        raise PipelineError(f"{path}: no UNet tensors ({UNET_PREFIX}*); not a Stability SVD checkpoint")
    inverse = {v: k for k, v in _map_each(lambda k: unet_key_map([k], layers_per_block), keys)[0].items()}
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for n in names:
            if n in inverse:
                out[n] = f.get_tensor(UNET_PREFIX + inverse[n]).float()
    return out
