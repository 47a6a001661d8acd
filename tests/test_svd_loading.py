"""Loading SVD and the reverse-motion weights: both forms, the compact delta file, single-file SVD.

Tiny random components only (built here); nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import sys

import pytest
import torch
from conftest import (
    COMFYUI_PATH,
    comfyui_available,
    comfyui_missing_reason,
    missing_modules_hint,
    skip_or_fail,
)
from safetensors import safe_open
from safetensors.torch import save_file

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.svd.loading import (
    DELTA_FORMAT,
    extract_reverse_delta,
    load_inbetween_model,
    load_reverse,
    load_svd,
    read_reverse_delta,
    save_reverse_delta,
)
from keyframe_propagation.pipelines.testing.svd import TINY_CLIP, TINY_UNET, TINY_VAE, build_svd_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """xt (the model used), img2vid (the base) and a reverse UNet fine-tuned from img2vid."""
    from diffusers import UNetSpatioTemporalConditionModel

    root = tmp_path_factory.mktemp("svdload")
    xt = build_svd_folder(root / "xt", seed=0)
    base = build_svd_folder(root / "img2vid", seed=1)
    unet = UNetSpatioTemporalConditionModel.from_pretrained(base, subfolder="unet")
    g = torch.Generator().manual_seed(5)
    changed = {}
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if (
                name.endswith(("attn1.to_v.weight", "attn1.to_out.0.weight"))
                and "temporal_transformer" in name
            ):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
                changed[name] = p.detach().clone()
    unet.save_pretrained(root / "reverse" / "unet")
    return {"root": root, "xt": xt, "base": base, "reverse": root / "reverse", "changed": changed}


def test_both_reverse_forms_give_identical_unets(models):
    m_a = load_inbetween_model(models["xt"], models["reverse"], models["base"], "fp32")
    names = m_a.param_names
    assert len(names) == 2 * len(m_a.layers) == 8 and set(names) == set(models["changed"])
    base_sd = load_svd(models["base"], "fp32").unet.state_dict()
    xt_sd = m_a.unet.state_dict()
    for n in names:  # reverse = xt + (fine-tuned - img2vid), as the reference does
        torch.testing.assert_close(m_a.reverse[n], xt_sd[n] + (models["changed"][n] - base_sd[n]))
    out, count = extract_reverse_delta(
        models["reverse"], models["base"], models["root"] / "delta32.safetensors", "fp32"
    )
    assert count == len(names)
    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == sorted(names) and f.metadata()["format"] == DELTA_FORMAT
    m_b = load_inbetween_model(models["xt"], out, None, "fp32")
    for n in names:
        assert torch.equal(m_a.reverse[n], m_b.reverse[n])
    with m_a.reverse_weights_in_unet() as ua:
        sd_a = {k: v.clone() for k, v in ua.state_dict().items()}
    with m_b.reverse_weights_in_unet() as ub:
        sd_b = ub.state_dict()
        assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # Swapped back afterwards; one UNet plus only the reverse tensors is held.
    assert all(torch.equal(m_b.unet.state_dict()[k], xt_sd[k]) for k in xt_sd)
    b = m_b.parameter_bytes()
    assert b["reverse"] == sum(xt_sd[n].numel() * 4 for n in names) and b["reverse"] < 0.2 * b["unet"]
    assert os.path.getsize(out) < 0.2 * os.path.getsize(
        models["reverse"] / "unet" / "diffusion_pytorch_model.safetensors"
    )


def test_fp16_delta_file_and_dtypes(models):
    out, _ = extract_reverse_delta(models["reverse"], models["base"], models["root"] / "delta16.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    exact = read_reverse_delta(models["reverse"], models["base"])
    half = read_reverse_delta(out)
    for k in exact:
        torch.testing.assert_close(half[k], exact[k], atol=1e-3, rtol=1e-2)
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        m = load_inbetween_model(models["xt"], out, None, name)
        assert m.unet.dtype == dt and m.vae.dtype == dt and m.image_encoder.dtype == dt
        assert all(w.dtype == dt for w in m.reverse.values())


def test_reverse_weight_errors_name_the_file(models, tmp_path):
    m = load_svd(models["xt"], "fp32")
    with pytest.raises(PipelineError, match="base") as e:
        load_reverse(m, models["reverse"])
    assert "extract-reverse-delta" in str(e.value)
    with pytest.raises(PipelineError, match="does not exist"):
        load_reverse(m, tmp_path / "nope.safetensors")
    # A delta with a wrong shape, and one missing tensors.
    delta = read_reverse_delta(models["reverse"], models["base"])
    k = sorted(delta)[0]
    bad = save_reverse_delta({**delta, k: torch.zeros(3, 3)}, tmp_path / "bad_shape.safetensors")
    with pytest.raises(PipelineError, match="bad_shape.safetensors.*shape"):
        load_reverse(m, bad)
    short = save_reverse_delta({n: t for n, t in delta.items() if n != k}, tmp_path / "short.safetensors")
    with pytest.raises(PipelineError, match=r"short.safetensors: missing 1 of the 8"):
        load_reverse(m, short)
    # Not a delta file and not a UNet.
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PipelineError, match="other.safetensors.*neither"):
        load_reverse(m, tmp_path / "other.safetensors")
    # The wrong base (xt instead of img2vid): detected, not silently added.
    with pytest.raises(PipelineError, match="not the UNet the reverse model was fine-tuned from"):
        load_reverse(m, models["reverse"], models["xt"])
    assert not m.has_reverse
    with pytest.raises(PipelineError, match="svd"):
        load_svd(tmp_path, "fp32")


# ----------------------------------------------------------------------------------------------
# Single-file SVD (Stability's original key layout), checked against ComfyUI's own SVD modules
# ----------------------------------------------------------------------------------------------
def _comfy_modules():
    if not comfyui_available():
        skip_or_fail(f"{comfyui_missing_reason()}: its SVD modules define the original layout")
    if str(COMFYUI_PATH) not in sys.path:
        sys.path.insert(0, str(COMFYUI_PATH))
    try:
        from comfy.cli_args import args

        args.cpu = True
        import comfy.ops
        from comfy.clip_vision import convert_to_transformers
        from comfy.ldm.models.autoencoder import AutoencodingEngine
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    except ModuleNotFoundError as e:  # ComfyUI's requirements missing
        skip_or_fail(f"ComfyUI at {COMFYUI_PATH} does not import: {missing_modules_hint([str(e.name)])}")
    except Exception as e:
        skip_or_fail(f"ComfyUI at {COMFYUI_PATH} does not import: {type(e).__name__}: {e}")
    # The tiny UNet of tiny.py in ComfyUI's (= sgm's) VideoUNet layout.
    unet = UNetModel(
        image_size=None, in_channels=8, model_channels=32, out_channels=4, num_res_blocks=[1, 1],
        channel_mult=[1, 2], use_spatial_transformer=True, transformer_depth=[1, 0],
        transformer_depth_output=[1, 1, 0, 0], transformer_depth_middle=1, context_dim=32,
        num_classes="sequential", adm_in_channels=24, num_heads=-1, num_head_channels=16,
        use_linear_in_transformer=True, legacy=False, extra_ff_mix_layer=True, use_spatial_context=True,
        merge_strategy="learned_with_images", merge_factor=0.0, video_kernel_size=[3, 1, 1],
        use_temporal_resblock=True, use_temporal_attention=True, disable_temporal_crossattention=False,
        operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    enc = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32}
    enc |= {"ch_mult": [1, 1, 1, 1], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": enc},
        decoder_config={
            "target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
            "params": enc | {"video_kernel_size": [3, 1, 1], "alpha": 0.0},
        },
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in [*unet.parameters(), *vae.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return unet.eval(), vae.eval(), convert_to_transformers


def _open_clip_visual(clip) -> dict[str, torch.Tensor]:
    """A transformers CLIP vision model's tensors in OpenCLIP's visual layout."""
    sd = clip.state_dict()
    out = {
        "class_embedding": sd["vision_model.embeddings.class_embedding"],
        "conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "proj": sd["visual_projection.weight"].t().contiguous(),
    }
    for i in range(clip.config.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}."
        q = f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[q + f"attn.in_proj_{leaf}"] = torch.cat([sd[p + f"self_attn.{x}_proj.{leaf}"] for x in "qkv"])
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1")):
                out[q + f"{a}.{leaf}"] = sd[p + f"{b}.{leaf}"]
            out[q + f"mlp.c_proj.{leaf}"] = sd[p + f"mlp.fc2.{leaf}"]
            out[q + f"attn.out_proj.{leaf}"] = sd[p + f"self_attn.out_proj.{leaf}"]
    return out


def test_single_file_svd_matches_comfyui_modules(tmp_path):
    """svd_xt.safetensors layout -> diffusers: same outputs as ComfyUI's VideoUNet and video VAE."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    c_unet, c_vae, comfy_clip_convert = _comfy_modules()
    torch.manual_seed(4)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).eval()
    visual = _open_clip_visual(clip)
    # Our OpenCLIP layout is the one ComfyUI converts from (independent check of the naming).
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    converted = comfy_clip_convert({prefix + k: v for k, v in visual.items()}, prefix)
    assert set(converted) == set(clip.state_dict()) - {"vision_model.embeddings.position_ids"}
    ckpt = {f"model.diffusion_model.{k}": v for k, v in c_unet.state_dict().items()}
    ckpt |= {f"first_stage_model.{k}": v for k, v in c_vae.state_dict().items()}
    ckpt |= {prefix + k: v.contiguous() for k, v in visual.items()}
    # Other parts of a real checkpoint (other conditioners, extras) are ignored.
    ckpt |= {
        "conditioner.embedders.3.encoder.x": torch.zeros(2),
        "model.diffusion_model.extra.weight": torch.zeros(2),
    }
    path = tmp_path / "svd_tiny.safetensors"
    save_file(ckpt, str(path))
    cfg = tmp_path / "configs"
    UNetSpatioTemporalConditionModel.from_config(TINY_UNET).save_config(cfg / "unet")
    AutoencoderKLTemporalDecoder.from_config(TINY_VAE).save_config(cfg / "vae")
    clip.config.save_pretrained(cfg / "image_encoder")
    from keyframe_propagation.pipelines.svd.single_file import CONFIG_DIR

    for sub in ("scheduler", "feature_extractor"):
        (cfg / sub).mkdir()
        for f in (CONFIG_DIR / sub).iterdir():
            (cfg / sub / f.name).write_text(f.read_text())

    m = load_svd(path, "fp32", config_dir=cfg)
    assert len(m.layers) == 4 and m.scheduler_config["prediction_type"] == "v_prediction"
    g = torch.Generator().manual_seed(0)
    B, F = 2, 4
    x = torch.randn(B, F, 8, 8, 8, generator=g)
    ctx = torch.randn(B, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * B)
    t = torch.tensor(0.7)
    with torch.no_grad():
        ours = m.unet(x, t, encoder_hidden_states=ctx, added_time_ids=ids).sample
        y = m.unet.add_time_proj(ids.flatten()).reshape(B, -1).repeat_interleave(F, 0)
        theirs = c_unet(
            x.flatten(0, 1), timesteps=t.expand(B * F), context=ctx.repeat_interleave(F, 0), y=y,
            num_video_frames=F, image_only_indicator=torch.zeros(B, F),
        ).view(B, F, 4, 8, 8)  # fmt: skip
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-3)
        z = torch.randn(F, 4, 8, 8, generator=g)
        torch.testing.assert_close(
            m.vae.decode(z, num_frames=F).sample, c_vae.decode(z), atol=1e-5, rtol=1e-4
        )
        img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        torch.testing.assert_close(
            m.vae.encode(img).latent_dist.mode(), c_vae.encode(img), atol=1e-5, rtol=1e-4
        )
        pix = torch.rand(1, 3, 224, 224, generator=g)
        torch.testing.assert_close(
            m.image_encoder(pix).image_embeds, clip(pix).image_embeds, atol=1e-5, rtol=1e-4
        )
    # The base UNet of form (a) may be such a single file too.
    fine_sd = {
        n: (w + 0.05 if n in m.param_names else w).contiguous() for n, w in m.unet.state_dict().items()
    }
    (tmp_path / "rev" / "unet").mkdir(parents=True)
    save_file(fine_sd, str(tmp_path / "rev" / "unet" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "rev" / "unet" / "config.json").write_text(json.dumps(dict(m.unet.config)))
    delta = read_reverse_delta(tmp_path / "rev", path, expected=m.expected_shapes(), layers_per_block=1)
    assert set(delta) == set(m.param_names)
    assert all(torch.allclose(d, torch.full_like(d, 0.05), atol=1e-6) for d in delta.values())


def test_single_file_errors(tmp_path):
    save_file({"model.diffusion_model.bogus.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(PipelineError, match="bad.safetensors"):
        load_svd(tmp_path / "bad.safetensors", "fp32")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "image.safetensors"))
    with pytest.raises(PipelineError, match="image.safetensors: no UNet tensors"):
        load_svd(tmp_path / "image.safetensors", "fp32")
